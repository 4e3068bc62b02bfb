//! Fan-out: many clients over both cores each get every message of the channels
//! they hold, in order; subscribers coming and going on a shared channel do not
//! disturb the others.

mod support;

use std::collections::HashMap;

use support::*;

const STREAM: &str = "fan.stream";
const PUBSUB: &str = "ps.fan";

/// Writes `n` messages to each of `channels`, interleaved; returns the expected
/// frames per channel, in order.
fn produce_round(con: &mut redis::Connection, channels: &[&str], n: usize) -> HashMap<String, Vec<String>> {
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..n {
        for ch in channels {
            let frame = produce(con, ch, &format!(r#"{{"i":{i},"ch":"{ch}"}}"#));
            expected.entry(ch.to_string()).or_default().push(frame);
        }
    }
    expected
}

/// Reads every expected frame from `client` and checks order per channel.
fn assert_receives_all(client: &mut Client, who: &str, expected: &HashMap<String, Vec<String>>) {
    let total: usize = expected.values().map(Vec::len).sum();
    let mut got: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..total {
        let raw = client.recv_text();
        got.entry(parse_delivery(&raw).ch).or_default().push(raw);
    }
    for (ch, want) in expected {
        assert_eq!(got.get(ch), Some(want), "{who} on {ch}");
    }
}

#[test]
fn two_hundred_clients_each_receive_every_message_in_order() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut clients: Vec<Client> = (0..200).map(|_| fg.connect()).collect();
    for c in &mut clients {
        c.sub(STREAM);
        c.sub(PUBSUB);
    }
    let expected = produce_round(&mut con, &[STREAM, PUBSUB], 50);
    for (i, c) in clients.iter_mut().enumerate() {
        assert_receives_all(c, &format!("client {i}"), &expected);
    }
    for c in &mut clients {
        c.assert_alive();
    }
}

#[test]
fn shared_channels_survive_subscribers_leaving_and_arriving() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let channels = ["fan.shared", "ps.shared"];

    // Ten subscribers spread over both cores; nine leave, half by unsubscribing,
    // half by disconnecting. The one left must still receive.
    let mut clients: Vec<Client> = (0..10).map(|_| fg.connect()).collect();
    for c in &mut clients {
        for ch in channels {
            c.sub(ch);
        }
    }
    let mut stayer = clients.pop().unwrap();
    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            for ch in channels {
                c.unsubscribe(ch);
            }
            c.assert_alive();
        }
        drop(c);
    }
    let expected = produce_round(&mut con, &channels, 5);
    assert_receives_all(&mut stayer, "the remaining subscriber", &expected);

    // Every subscriber leaves, then new ones arrive: the channel comes back.
    drop(stayer);
    for round in 0..3 {
        let mut newcomers: Vec<Client> = (0..4).map(|_| fg.connect()).collect();
        for c in &mut newcomers {
            for ch in channels {
                c.sub(ch);
            }
        }
        let expected = produce_round(&mut con, &channels, 3);
        for (i, c) in newcomers.iter_mut().enumerate() {
            assert_receives_all(c, &format!("round {round} newcomer {i}"), &expected);
        }
    }
}

#[test]
fn each_client_gets_only_its_own_channels() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut a = fg.connect();
    let mut b = fg.connect();
    a.sub("fan.only.a");
    a.sub("ps.only.a");
    b.sub("fan.only.b");
    b.sub("ps.only.b");
    let for_a = produce_round(&mut con, &["fan.only.a", "ps.only.a"], 5);
    let for_b = produce_round(&mut con, &["fan.only.b", "ps.only.b"], 5);
    assert_receives_all(&mut a, "a", &for_a);
    assert_receives_all(&mut b, "b", &for_b);
    // Nothing of the other's is pending: the next frame is the pong.
    a.assert_alive();
    b.assert_alive();
}
