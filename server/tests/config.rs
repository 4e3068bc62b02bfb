//! Configuration: flags, `FEEDGATE_*` environment variables and the config
//! file, their precedence, `--key-prefix`, and refusing to start on a bad key,
//! a bad value or a port already in use.

mod support;

use std::net::TcpListener;

use support::*;

/// Runs feedgate expecting it to refuse to start; returns its stderr.
/// Exit code for a bad configuration (docs/operations.md; the systemd unit's
/// `RestartPreventExitStatus=2` relies on it).
const BAD_CONFIG: i32 = 2;
/// Exit code for a failure at run time, a port in use included.
const RUN_FAILED: i32 = 1;

/// Runs `builder` expecting it to exit with `code` (a panic's 101 fails).
fn refuses_to_start_with(builder: FeedgateBuilder, what: &str, code: i32) -> String {
    let exited = builder.run_to_exit();
    assert_eq!(
        exited.status.code(),
        Some(code),
        "{what}: exited with {:?}; stderr:\n{}",
        exited.status,
        exited.stderr
    );
    exited.stderr
}

fn refuses_to_start(builder: FeedgateBuilder, what: &str) -> String {
    refuses_to_start_with(builder, what, BAD_CONFIG)
}

/// Asserts that `stderr` names the setting in one of its spellings.
fn assert_names(stderr: &str, spellings: &[&str], what: &str) {
    assert!(
        spellings.iter().any(|s| stderr.contains(s)),
        "{what}: stderr should name {spellings:?}; it was:\n{stderr}"
    );
}

/// Each case must refuse to start and name one of its spellings on stderr.
fn assert_refused(cases: Vec<(String, FeedgateBuilder, &[&str])>) {
    for (what, builder, spellings) in cases {
        let stderr = refuses_to_start(builder, &what);
        assert_names(&stderr, spellings, &what);
    }
}

/// A case for [`assert_refused`]: feedgate with `file` as its config file.
fn with_file(
    redis: &Redis,
    file: &str,
    spellings: &'static [&'static str],
) -> (String, FeedgateBuilder, &'static [&'static str]) {
    (
        format!("config file {file:?}"),
        Feedgate::builder(redis).config(file),
        spellings,
    )
}

#[test]
fn unknown_config_keys_are_refused_by_name() {
    let redis = Redis::start();
    assert_refused(vec![
        with_file(&redis, "lisen = \"127.0.0.1:1\"\n", &["lisen"]),
        with_file(&redis, "[limits]\nmax_frame_bytes = 1\n", &["max_frame_bytes"]),
        with_file(
            &redis,
            "[[namespaces]]\nprefix = \"ps.\"\nsource = \"pubsub\"\nretain = 5\n",
            &["retain"],
        ),
    ]);
}

#[test]
fn bad_config_values_are_refused_by_name() {
    let redis = Redis::start();
    assert_refused(vec![
        with_file(&redis, "[limits]\nping_interval_ms = 0\n", &["ping_interval_ms"]),
        with_file(
            &redis,
            "[limits]\nmax_subscriptions = \"many\"\n",
            &["max_subscriptions"],
        ),
        with_file(
            &redis,
            "[[namespaces]]\nprefix = \"x.\"\nsource = \"kafka\"\n",
            &["kafka", "source"],
        ),
    ]);
}

const MAX_SUBS_NAMES: &[&str] = &["max-subscriptions", "max_subscriptions", "MAX_SUBSCRIPTIONS"];

#[test]
fn bad_flag_and_env_values_are_refused_by_name() {
    let redis = Redis::start();
    let fg = || Feedgate::builder(&redis);
    assert_refused(vec![
        (
            "--max-subscriptions abc".into(),
            fg().flag("max-subscriptions", "abc"),
            MAX_SUBS_NAMES,
        ),
        (
            "--max-subscriptions 0".into(),
            fg().flag("max-subscriptions", 0),
            MAX_SUBS_NAMES,
        ),
        (
            "FEEDGATE_MAX_SUBSCRIPTIONS=abc".into(),
            fg().env("FEEDGATE_MAX_SUBSCRIPTIONS", "abc"),
            MAX_SUBS_NAMES,
        ),
        (
            "FEEDGATE_PING_INTERVAL_MS=0".into(),
            fg().env("FEEDGATE_PING_INTERVAL_MS", 0),
            &["ping-interval-ms", "ping_interval_ms", "PING_INTERVAL_MS"],
        ),
        ("--no-such-flag".into(), fg().flag("no-such-flag", 1), &["no-such-flag"]),
    ]);
}

#[test]
fn port_in_use_is_refused_naming_the_address() {
    let redis = Redis::start();
    let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = holder.local_addr().unwrap().port();
    let stderr = refuses_to_start_with(Feedgate::builder(&redis).port(port), "port in use", RUN_FAILED);
    assert_names(&stderr, &[&format!("127.0.0.1:{port}")], "port in use");
    assert!(
        stderr.to_lowercase().contains("in use"),
        "stderr should say the address is in use:\n{stderr}"
    );
    drop(holder);
}

/// How many subscriptions a connection to `fg` may hold: subscribes until the
/// server says `too_many_subscriptions` (at most `cap` + 1 tries).
fn subscription_limit(fg: &Feedgate, cap: usize) -> usize {
    let mut c = fg.connect();
    for n in 0..=cap {
        let req = c.next_req();
        let reply = c.request(serde_json::json!({"op": "subscribe", "channel": format!("ps.cfg.{n}"), "req": req}));
        match reply["type"].as_str() {
            Some("subscribed") => continue,
            _ => {
                check_error(&reply, "too_many_subscriptions", Some(req)).unwrap();
                return n;
            }
        }
    }
    panic!("more than {cap} subscriptions allowed");
}

#[test]
fn flags_win_over_env_and_env_over_the_file() {
    let redis = Redis::start();
    let file = format!("{PUBSUB_CONFIG}\n[limits]\nmax_subscriptions = 1\n");

    let fg = Feedgate::builder(&redis).config(&file).start();
    assert_eq!(subscription_limit(&fg, 5), 1, "from the file");
    drop(fg);

    let fg = Feedgate::builder(&redis)
        .config(&file)
        .env("FEEDGATE_MAX_SUBSCRIPTIONS", 2)
        .start();
    assert_eq!(subscription_limit(&fg, 5), 2, "env over file");
    drop(fg);

    let fg = Feedgate::builder(&redis)
        .config(&file)
        .env("FEEDGATE_MAX_SUBSCRIPTIONS", 2)
        .flag("max-subscriptions", 3)
        .start();
    assert_eq!(subscription_limit(&fg, 5), 3, "flag over env");
}

#[test]
fn env_alone_sets_a_flag() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).env("FEEDGATE_MAX_SUBSCRIPTIONS", 4).start();
    assert_eq!(subscription_limit(&fg, 8), 4);
}

#[test]
fn key_prefix_is_added_to_redis_keys_and_channels() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("key-prefix", "app:").start();
    let mut con = redis.conn();
    let mut c = fg.connect();
    c.sub("md.kp");
    c.sub("ps.kp");

    // Written without the prefix first: those are other keys and must not arrive.
    xadd_data(&mut con, "md.kp", b"1");
    publish(&mut con, "ps.kp", b"1");
    let id = xadd_data(&mut con, "app:md.kp", b"2");
    assert_eq!(
        c.recv_text(),
        stream_frame("md.kp", &id, "2"),
        "stream key is key_prefix + channel"
    );
    publish(&mut con, "app:ps.kp", b"2");
    assert_eq!(
        c.recv_text(),
        pubsub_frame("ps.kp", "2"),
        "pub/sub channel is key_prefix + channel"
    );
}

#[test]
fn invalid_log_filter_exits_2_naming_log() {
    let redis = Redis::start();
    let cases = [
        (
            "--log 'not[a(valid'",
            Feedgate::builder(&redis).flag("log", "not[a(valid"),
        ),
        (
            "FEEDGATE_LOG='not[a(valid'",
            Feedgate::builder(&redis).env("FEEDGATE_LOG", "not[a(valid"),
        ),
        (
            "log = 'not[a(valid' in the file",
            Feedgate::builder(&redis).config(&format!("log = \"not[a(valid\"\n{PUBSUB_CONFIG}")),
        ),
    ];
    for (what, builder) in cases {
        let exited = builder.run_to_exit();
        assert_eq!(
            exited.status.code(),
            Some(2),
            "{what}: exited with {:?}; stderr:\n{}",
            exited.status,
            exited.stderr
        );
        assert_names(&exited.stderr, &["`log`", "--log", "FEEDGATE_LOG"], what);
    }
}
