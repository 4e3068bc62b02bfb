use super::*;
use proptest::prelude::*;

fn spec(channel: &str, policy: SlowConsumer) -> LaneSpec {
    LaneSpec {
        channel: Rc::from(channel),
        policy,
        stream: true,
        after: StreamId::ZERO,
        min_interval: None,
    }
}

/// A delivery of `channel` with id `n-0`, key `key`, padded to about `size` bytes.
fn delivery(channel: &str, n: u64, key: Option<&str>, size: usize) -> Delivery {
    let pad = "x".repeat(size.saturating_sub(40));
    let json = format!(
        r#"{{"ch":"{channel}","id":"{n}-0","k":"{}","p":"{pad}"}}"#,
        key.unwrap_or("")
    );
    Delivery {
        frame: frame::text(json.as_bytes()),
        id: StreamId::new(n, 0),
        key: key.map(|k| Key::new(Bytes::copy_from_slice(k.as_bytes()))),
    }
}

/// What the writer saw, parsed.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Delivery {
        ch: String,
        id: u64,
        key: String,
    },
    Gap {
        ch: String,
        after: Option<u64>,
        dropped: Option<u64>,
    },
    Other,
}

fn drain(q: &mut OutQueue) -> Vec<Seen> {
    let mut out = Vec::new();
    q.drain_into(&mut out, usize::MAX);
    out.iter().map(|f| parse(frame::body(f))).collect()
}

fn ms(id: &serde_json::Value) -> Option<u64> {
    id.as_str()?.split('-').next()?.parse().ok()
}

fn parse(body: &[u8]) -> Seen {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Seen::Other;
    };
    if v["type"] == "gap" {
        return Seen::Gap {
            ch: v["channel"].as_str().unwrap_or_default().into(),
            after: ms(&v["after"]),
            dropped: v["dropped"].as_u64(),
        };
    }
    match v["ch"].as_str() {
        Some(ch) => Seen::Delivery {
            ch: ch.into(),
            id: ms(&v["id"]).unwrap_or(0),
            key: v["k"].as_str().unwrap_or_default().into(),
        },
        None => Seen::Other,
    }
}

#[test]
fn refuses_past_the_limit_and_counts_bytes() {
    let mut q = OutQueue::new(10 + 2 * FRAME_OVERHEAD);
    q.push(Bytes::from_static(b"123456")).unwrap();
    assert!(q.push(Bytes::from_static(b"1234567")).is_err());
    q.push(Bytes::from_static(b"1234")).unwrap();
    assert_eq!(q.bytes(), 10 + 2 * FRAME_OVERHEAD);
    let mut out = Vec::new();
    q.drain_into(&mut out, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(q.bytes(), 4 + FRAME_OVERHEAD);
}

#[test]
fn tiny_frames_are_charged_their_overhead() {
    // 2-byte pongs: a 64 KiB bound holds ~1,000 of them, not 32,768.
    let mut q = OutQueue::new(64 * 1024);
    let mut queued = 0;
    while q.push(Bytes::from_static(b"\x8a\x00")).is_ok() {
        queued += 1;
    }
    assert_eq!(queued, 64 * 1024 / (2 + FRAME_OVERHEAD));
}

#[test]
fn clear_empties_and_the_limit_is_kept() {
    let mut q = OutQueue::new(1000);
    assert_eq!(q.limit(), 1000);
    assert!(q.is_empty());
    q.push(Bytes::from_static(b"abc")).unwrap();
    assert!(!q.is_empty());
    q.clear();
    assert!(q.is_empty());
    assert_eq!(q.bytes(), 0);
    assert_eq!(q.limit(), 1000);
}

#[test]
fn one_frame_larger_than_the_limit_still_goes_to_an_empty_queue() {
    let mut q = OutQueue::new(4);
    q.push(Bytes::from_static(b"123456")).unwrap();
    assert!(q.push(Bytes::from_static(b"1")).is_err());
}

#[test]
fn drop_oldest_drops_that_channels_oldest_and_announces_the_hole_once() {
    let now = Instant::now();
    let mut q = OutQueue::new(4 * (200 + FRAME_OVERHEAD));
    let a = q.open_lane(spec("a", SlowConsumer::DropOldest));
    let b = q.open_lane(spec("b", SlowConsumer::DropOldest));
    q.push_delivery(a, delivery("a", 1, None, 200), now).unwrap();
    assert_eq!(
        drain(&mut q),
        [Seen::Delivery {
            ch: "a".into(),
            id: 1,
            key: String::new()
        }]
    );
    q.push_delivery(b, delivery("b", 1, None, 200), now).unwrap();
    for n in 2..=7 {
        q.push_delivery(a, delivery("a", n, None, 200), now).unwrap();
    }
    let seen = drain(&mut q);
    assert_eq!(
        seen,
        [
            Seen::Delivery {
                ch: "b".into(),
                id: 1,
                key: String::new()
            },
            Seen::Gap {
                ch: "a".into(),
                after: Some(1),
                dropped: Some(4)
            },
            Seen::Delivery {
                ch: "a".into(),
                id: 6,
                key: String::new()
            },
            Seen::Delivery {
                ch: "a".into(),
                id: 7,
                key: String::new()
            },
        ],
        "b keeps its frame; a's oldest are one announced hole (the gap's own cost made room for two of a's)"
    );
    let counts = q.take_counts();
    assert_eq!((counts.dropped, counts.gaps), (4, 1));
    q.push_delivery(a, delivery("a", 8, None, 200), now).unwrap();
    assert_eq!(drain(&mut q).len(), 1, "no second gap for the same hole");
}

#[test]
fn a_full_queue_of_other_channels_drops_the_incoming_delivery_with_a_gap() {
    let now = Instant::now();
    let mut q = OutQueue::new(2 * (200 + FRAME_OVERHEAD));
    let a = q.open_lane(spec("a", SlowConsumer::DropOldest));
    q.push(frame::text(&[b'1'; 200])).unwrap();
    q.push(frame::text(&[b'2'; 190])).unwrap();
    q.push_delivery(a, delivery("a", 1, None, 200), now).unwrap();
    q.push_delivery(a, delivery("a", 2, None, 200), now).unwrap();
    let seen = drain(&mut q);
    assert_eq!(seen.len(), 2, "the hole stays open until a later delivery comes");
    q.push_delivery(a, delivery("a", 3, None, 200), now).unwrap();
    assert_eq!(
        drain(&mut q),
        [
            Seen::Gap {
                ch: "a".into(),
                after: Some(0),
                dropped: Some(2)
            },
            Seen::Delivery {
                ch: "a".into(),
                id: 3,
                key: String::new()
            }
        ]
    );
}

#[test]
fn conflate_keeps_the_newest_per_key_in_arrival_order() {
    let now = Instant::now();
    let mut q = OutQueue::new(1 << 20);
    let a = q.open_lane(spec("a", SlowConsumer::Conflate));
    for (n, key) in [(1, "x"), (2, "y"), (3, "x"), (4, "z"), (5, "y")] {
        q.push_delivery(a, delivery("a", n, Some(key), 100), now).unwrap();
    }
    let ids: Vec<(u64, String)> = drain(&mut q)
        .into_iter()
        .map(|s| match s {
            Seen::Delivery { id, key, .. } => (id, key),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, [(3, "x".into()), (4, "z".into()), (5, "y".into())]);
    assert_eq!(q.take_counts().conflated, 2);
}

#[test]
fn conflate_without_a_key_keeps_the_newest_of_the_channel() {
    let now = Instant::now();
    let mut q = OutQueue::new(1 << 20);
    let a = q.open_lane(spec("a", SlowConsumer::Conflate));
    q.push(frame::text(b"reply")).unwrap();
    for n in 1..=1000 {
        q.push_delivery(a, delivery("a", n, None, 100), now).unwrap();
    }
    assert!(q.slots.len() < 200, "tombstones are compacted: {}", q.slots.len());
    let seen = drain(&mut q);
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1],
        Seen::Delivery {
            ch: "a".into(),
            id: 1000,
            key: String::new()
        }
    );
}

#[test]
fn max_rate_holds_deliveries_conflated_and_releases_the_newest_at_the_end() {
    let t0 = Instant::now();
    let mut q = OutQueue::new(1 << 20);
    let a = q.open_lane(LaneSpec {
        min_interval: Some(Duration::from_millis(100)),
        ..spec("a", SlowConsumer::Disconnect)
    });
    assert_eq!(
        q.push_delivery(a, delivery("a", 1, None, 100), t0).unwrap(),
        Pushed::Queued
    );
    let due = t0 + Duration::from_millis(100);
    assert_eq!(
        q.push_delivery(a, delivery("a", 2, None, 100), t0).unwrap(),
        Pushed::Throttled { due, schedule: true }
    );
    assert_eq!(
        q.push_delivery(a, delivery("a", 3, None, 100), t0).unwrap(),
        Pushed::Throttled { due, schedule: false }
    );
    assert_eq!(drain(&mut q).len(), 1);
    assert_eq!(
        q.release_due(a, t0 + Duration::from_millis(50)).unwrap(),
        Some(due),
        "not yet"
    );
    assert_eq!(q.release_due(a, due).unwrap(), None, "one waited, the newest");
    assert_eq!(
        drain(&mut q),
        [Seen::Delivery {
            ch: "a".into(),
            id: 3,
            key: String::new()
        }]
    );
    assert_eq!(q.bytes(), 0);
    assert_eq!(q.take_counts().throttled, 2);
}

#[test]
fn closing_a_lane_returns_what_its_throttle_held() {
    let t0 = Instant::now();
    let mut q = OutQueue::new(1 << 20);
    let a = q.open_lane(LaneSpec {
        min_interval: Some(Duration::from_secs(1)),
        ..spec("a", SlowConsumer::Conflate)
    });
    q.push_delivery(a, delivery("a", 1, Some("k"), 100), t0).unwrap();
    q.push_delivery(a, delivery("a", 2, Some("k"), 100), t0).unwrap();
    drain(&mut q);
    assert!(q.throttled_bytes() > 0, "the held one counts");
    q.close_lane(a);
    assert_eq!((q.bytes(), q.throttled_bytes()), (0, 0));
}

#[test]
fn closing_a_lane_with_a_hole_drops_what_it_queued_after_the_hole() {
    let now = Instant::now();
    let mut q = OutQueue::new(3 * (200 + FRAME_OVERHEAD) + GAP_COST);
    let a = q.open_lane(spec("a", SlowConsumer::DropOldest));
    for n in 1..=6 {
        q.push_delivery(a, delivery("a", n, None, 200), now).unwrap();
    }
    q.close_lane(a);
    q.push(frame::text(b"{}")).unwrap();
    assert_eq!(drain(&mut q), [Seen::Other], "no delivery after an unannounced hole");
    assert_eq!(q.bytes(), 0);
}

#[test]
fn a_throttle_loss_is_announced_after_what_the_lane_had_queued() {
    let t0 = Instant::now();
    let interval = Duration::from_millis(10);
    // Room for 4 frames; throttled lanes may hold half of it: two.
    let mut q = OutQueue::new(4 * (200 + FRAME_OVERHEAD));
    let a = q.open_lane(LaneSpec {
        min_interval: Some(interval),
        ..spec("a", SlowConsumer::Disconnect)
    });
    q.push_delivery(a, delivery("a", 1, None, 200), t0).unwrap();
    for (n, key) in [(2, "x"), (3, "y"), (4, "z")] {
        q.push_delivery(a, delivery("a", n, Some(key), 200), t0).unwrap();
    }
    // 2 was lost to the throttle's budget; 3 is released, then 4.
    q.release_due(a, t0 + interval).unwrap();
    q.release_due(a, t0 + interval * 2).unwrap();
    assert_eq!(
        drain(&mut q),
        [
            Seen::Delivery {
                ch: "a".into(),
                id: 1,
                key: String::new()
            },
            Seen::Gap {
                ch: "a".into(),
                after: Some(1),
                dropped: None
            },
            Seen::Delivery {
                ch: "a".into(),
                id: 3,
                key: "y".into()
            },
            Seen::Delivery {
                ch: "a".into(),
                id: 4,
                key: "z".into()
            },
        ]
    );
    assert_eq!(q.take_counts().dropped, 1, "counted once");
}

#[test]
fn what_throttled_lanes_hold_is_bounded_for_the_connection_not_per_lane() {
    let t0 = Instant::now();
    let limit = 20 * (200 + FRAME_OVERHEAD);
    let mut q = OutQueue::new(limit);
    let lanes: Vec<LaneId> = (0..4)
        .map(|i| {
            q.open_lane(LaneSpec {
                min_interval: Some(Duration::from_secs(60)),
                ..spec(&format!("c{i}"), SlowConsumer::Conflate)
            })
        })
        .collect();
    for n in 1..=100 {
        for &lane in &lanes {
            q.push_delivery(lane, delivery("c", n, Some(&format!("k{n}")), 200), t0)
                .unwrap();
        }
        assert!(
            q.throttled_bytes() <= limit / 2,
            "{} over {}",
            q.throttled_bytes(),
            limit / 2
        );
    }
    q.push(frame::text(b"reply")).unwrap();
}

/// One step of a connection's life, for the property tests.
#[derive(Debug, Clone)]
enum Step {
    /// A reply or a delivery of a `disconnect` channel.
    Plain(usize),
    /// A delivery on lane 0 (drop_oldest), 1 (conflate by key) or 2 (conflate).
    Lane { lane: usize, key: u8, size: usize },
    /// The writer takes up to n frames.
    Drain(usize),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            (10usize..300).prop_map(Step::Plain),
            (0usize..3, 0u8..4, 10usize..400).prop_map(|(lane, key, size)| Step::Lane { lane, key, size }),
            (0usize..6).prop_map(Step::Drain),
        ],
        1..300,
    )
}

const NAMES: [&str; 3] = ["drop", "keyed", "chan"];

/// Runs `steps` on a queue; returns everything the writer saw, what each lane
/// was given (id, key), and the largest byte count past the limit.
/// What each lane was given: (id, key) in order.
type Given = [Vec<(u64, String)>; 3];

fn run(steps: &[Step], limit: usize) -> (Vec<Seen>, Given, usize) {
    let now = Instant::now();
    let mut q = OutQueue::new(limit);
    let policies = [SlowConsumer::DropOldest, SlowConsumer::Conflate, SlowConsumer::Conflate];
    let lanes: Vec<LaneId> = (0..3).map(|i| q.open_lane(spec(NAMES[i], policies[i]))).collect();
    let mut given: Given = Default::default();
    let mut seen = Vec::new();
    let mut over = 0;
    let mut next_id = [0u64; 3];
    for step in steps {
        match *step {
            Step::Plain(size) => {
                let _ = q.push(frame::text(&vec![b'p'; size]));
            }
            Step::Lane { lane, key, size } => {
                next_id[lane] += 1;
                let key = if lane == 2 { None } else { Some(format!("k{key}")) };
                let d = delivery(NAMES[lane], next_id[lane], key.as_deref(), size);
                given[lane].push((next_id[lane], key.unwrap_or_default()));
                q.push_delivery(lanes[lane], d, now).unwrap();
            }
            Step::Drain(n) => {
                let mut out = Vec::new();
                q.drain_into(&mut out, n);
                seen.extend(out.iter().map(|f| parse(frame::body(f))));
            }
        }
        over = over.max(q.bytes().saturating_sub(limit));
    }
    seen.extend(drain(&mut q));
    // A hole still open at the end is announced before the next delivery.
    for lane in 0..3 {
        next_id[lane] += 1;
        let key = (lane == 1).then_some("end");
        given[lane].push((next_id[lane], key.unwrap_or_default().to_owned()));
        q.push_delivery(lanes[lane], delivery(NAMES[lane], next_id[lane], key, 10), now)
            .unwrap();
        seen.extend(drain(&mut q));
    }
    assert_eq!(q.bytes(), 0, "every byte counted in was counted out");
    (seen, given, over)
}

fn of_lane(seen: &[Seen], name: &str) -> Vec<Seen> {
    seen.iter()
        .filter(|s| matches!(s, Seen::Delivery { ch, .. } | Seen::Gap { ch, .. } if ch == name))
        .cloned()
        .collect()
}

proptest! {
    /// The bound holds: past it only by one frame into an empty queue or by
    /// one gap per lane.
    #[test]
    fn the_byte_bound_holds(steps in steps(), limit in 500usize..4000) {
        let (_, _, over) = run(&steps, limit);
        prop_assert!(over <= 400 + FRAME_OVERHEAD + 3 * GAP_COST, "over by {over}");
    }

    /// drop_oldest: deliveries in order; every hole, and only a hole, is
    /// announced once, before the first delivery after it, with the last id
    /// delivered and the count dropped.
    #[test]
    fn drop_oldest_announces_every_hole_exactly_once(steps in steps(), limit in 500usize..4000) {
        let (seen, given, _) = run(&steps, limit);
        let lane = of_lane(&seen, "drop");
        let mut last = 0;
        let mut pending_gap: Option<(Option<u64>, Option<u64>)> = None;
        for s in &lane {
            match s {
                Seen::Gap { after, dropped, .. } => {
                    prop_assert!(pending_gap.is_none(), "two gaps in a row: {lane:?}");
                    pending_gap = Some((*after, *dropped));
                }
                Seen::Delivery { id, .. } => {
                    prop_assert!(*id > last);
                    let skipped = id - last - 1;
                    match pending_gap.take() {
                        Some((after, dropped)) => {
                            prop_assert_eq!(after, Some(last));
                            prop_assert_eq!(dropped, Some(skipped));
                            prop_assert!(skipped > 0);
                        }
                        None => prop_assert_eq!(skipped, 0, "silent hole before {}", id),
                    }
                    last = *id;
                }
                Seen::Other => {}
            }
        }
        prop_assert!(pending_gap.is_none(), "a gap with no delivery after it");
        prop_assert_eq!(last, given[0].len() as u64, "the last delivery reached the reader");
    }

    /// conflate: kept deliveries in their original order; each key's newest
    /// value is delivered last for that key unless a gap announces a loss.
    #[test]
    fn conflate_delivers_each_keys_newest_last(steps in steps(), limit in 500usize..4000) {
        let (seen, given, _) = run(&steps, limit);
        for (i, name) in [(1, "keyed"), (2, "chan")] {
            let lane = of_lane(&seen, name);
            let ids: Vec<u64> = lane.iter().filter_map(|s| match s { Seen::Delivery { id, .. } => Some(*id), _ => None }).collect();
            prop_assert!(ids.windows(2).all(|w| w[0] < w[1]), "order kept: {ids:?}");
            let announced = lane.iter().any(|s| matches!(s, Seen::Gap { .. }));
            if !announced {
                let mut newest: HashMap<String, u64> = HashMap::new();
                for (id, key) in &given[i] {
                    newest.insert(key.clone(), *id);
                }
                for (key, id) in newest {
                    prop_assert!(ids.contains(&id), "{name}: newest {id} of {key} missing");
                }
            }
        }
    }

    /// disconnect, and any policy for a client that keeps up: nothing is
    /// lost or reordered.
    #[test]
    fn a_reader_that_keeps_up_receives_everything(sizes in proptest::collection::vec((0usize..3, 0u8..4, 10usize..400), 1..200)) {
        let mut steps = Vec::new();
        for (lane, key, size) in sizes {
            steps.push(Step::Lane { lane, key, size });
            steps.push(Step::Drain(usize::MAX));
        }
        let (seen, given, _) = run(&steps, 4000);
        for (i, name) in NAMES.iter().enumerate() {
            let ids: Vec<u64> = of_lane(&seen, name).iter().filter_map(|s| match s { Seen::Delivery { id, .. } => Some(*id), _ => None }).collect();
            let want: Vec<u64> = given[i].iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(ids, want);
        }
    }

    /// Plain frames (disconnect channels, replies) are never dropped or
    /// reordered: a push either queues or fails.
    #[test]
    fn plain_frames_are_refused_never_dropped(sizes in proptest::collection::vec(1usize..500, 1..100), limit in 100usize..5000) {
        let mut q = OutQueue::new(limit);
        let mut accepted = Vec::new();
        for (i, size) in sizes.into_iter().enumerate() {
            let mut body = vec![b'x'; size];
            body[0] = i as u8;
            if q.push(frame::text(&body)).is_ok() {
                accepted.push(i as u8);
            }
        }
        let mut out = Vec::new();
        q.drain_into(&mut out, usize::MAX);
        let got: Vec<u8> = out.iter().map(|f| frame::body(f)[0]).collect();
        prop_assert_eq!(got, accepted);
    }
}
