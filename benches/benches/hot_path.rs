//! The hot path of feedgate, through `feedgate-core`'s public API:
//!
//! - `frame/*`: one delivery frame built from a stream entry or a pub/sub body
//!   (and shared by 10 subscribers); the keepalive's ping, built or prebuilt;
//! - `resp/xread_100`: one RESP3 XREAD reply of 100 entries decoded and read;
//! - `xread_args/{rebuilt,kept,encode_only}/{1,16,256}`: the stream reader's
//!   XREAD command for that many streams: its arguments built afresh (before),
//!   kept from the last read (server/src/redis/streams/args.rs, built here on
//!   its own), or only encoded;
//! - `op/subscribe_since`: one client subscribe op parsed;
//! - `queue/fanout_1000`: one shared frame pushed to 1,000 subscriber queues;
//! - `queue/{drop_oldest,conflate}_fanout_1000`: the same through each
//!   subscriber's `drop_oldest` or `conflate` lane (10 keys);
//! - `queue/throttled_10000`: one delivery held by each of 10,000 `max_rate`
//!   lanes, then each lane's release taken off the core's schedule.
//!
//! Inputs come from `feedgate_benches` (checked by its tests). Run with
//! `cargo bench -p feedgate-benches`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use feedgate_benches::{
    data_entry, data_entry_1kib, entry_id, multi_field_entry, multi_field_entry_1kib, xread_reply, CHANNEL, JSON_100B,
    SUBSCRIBE_SINCE,
};
use feedgate_core::frame::{self, FrameBuilder};
use std::rc::Rc;

use feedgate_core::channel::SlowConsumer;
use feedgate_core::queue::{Delivery, Key, LaneId, LaneSpec, OutQueue, Pushed, Releases};
use feedgate_core::StreamId;
use feedgate_core::{op, resp};

// Its unit tests compile here too (benches build with cfg(test)) and go unused.
#[allow(unused)]
#[path = "../../server/src/redis/streams/args.rs"]
mod xread_args;

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    // One builder reused across iterations, as the server keeps one per core.
    let mut builder = FrameBuilder::new();
    let id = entry_id(42);

    let fields = data_entry();
    group.bench_function("stream_data_json_100B", |b| {
        b.iter(|| builder.stream_delivery(black_box(CHANNEL), black_box(id), black_box(&fields[..])))
    });

    let fields = data_entry_1kib();
    group.bench_function("stream_data_json_1KiB", |b| {
        b.iter(|| builder.stream_delivery(black_box(CHANNEL), black_box(id), black_box(&fields[..])))
    });

    let fields = multi_field_entry();
    group.bench_function("stream_6_fields", |b| {
        b.iter(|| builder.stream_delivery(black_box(CHANNEL), black_box(id), black_box(&fields[..])))
    });

    let fields = multi_field_entry_1kib();
    group.bench_function("stream_6_fields_1KiB", |b| {
        b.iter(|| builder.stream_delivery(black_box(CHANNEL), black_box(id), black_box(&fields[..])))
    });

    group.bench_function("pubsub_json_100B", |b| {
        b.iter(|| builder.pubsub_delivery(black_box(CHANNEL), black_box(JSON_100B)))
    });

    // A delivery frame as fan-out uses it: built once, then shared by 10
    // subscribers, and dropped when the last one has written it.
    let fields = data_entry();
    group.bench_function("stream_data_json_100B_shared_10", |b| {
        b.iter(|| {
            let frame = builder.stream_delivery(black_box(CHANNEL), black_box(id), black_box(&fields[..]));
            let clones: [Bytes; 10] = std::array::from_fn(|_| frame.clone());
            black_box(clones)
        })
    });

    // The keepalive's ping, once per connection per interval: built each time,
    // or a clone of one prebuilt `Bytes`.
    group.bench_function("ping_built", |b| b.iter(|| frame::ping(black_box(b"fg"))));
    let ping = Bytes::from_static(&[0x89, 2, b'f', b'g']);
    assert_eq!(ping, frame::ping(b"fg"));
    group.bench_function("ping_static", |b| b.iter(|| black_box(&ping).clone()));
    group.finish();
}

fn xread(c: &mut Criterion) {
    const ENTRIES: u64 = 100;
    let raw = xread_reply(ENTRIES);
    let mut group = c.benchmark_group("resp");
    group.throughput(Throughput::Elements(ENTRIES));
    // The copy into a fresh BytesMut (the socket read) is setup, not timed; the
    // decoded entries are dropped after the timing.
    group.bench_function("xread_100", |b| {
        b.iter_batched(
            || BytesMut::from(&raw[..]),
            |mut buf| {
                let frame = resp::decode(&mut buf).expect("RESP").expect("complete reply");
                resp::xread(frame).expect("XREAD shape")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The arguments of the stream reader's XREAD for `n` live streams, encoded
/// into the connection's out buffer, as `read_loop` (server/src/redis/streams.rs)
/// does before every read: each key is `key_prefix + channel` (`Settings::key_of`),
/// each id the channel's cursor as text.
fn xread_args(c: &mut Criterion) {
    const PREFIX: &str = "fg:";
    let mut group = c.benchmark_group("xread_args");
    for n in [1usize, 16, 256] {
        let names: Vec<Rc<str>> = (0..n).map(|i| Rc::from(format!("md.SYM-{i:04}"))).collect();
        let cursors: Vec<(Rc<str>, StreamId)> = names.iter().map(|c| (c.clone(), entry_id(7))).collect();
        let key_of = |name: &str| [PREFIX.as_bytes(), name.as_bytes()].concat();
        let mut out = BytesMut::with_capacity(64 * 1024);
        group.throughput(Throughput::Elements(n as u64));
        // What every read did before: the keys and the id strings built afresh.
        group.bench_function(format!("rebuilt/{n}"), |b| {
            b.iter(|| {
                let cursors = black_box(&cursors);
                let keys: Vec<Vec<u8>> = cursors.iter().map(|(name, _)| key_of(name)).collect();
                let ids: Vec<String> = cursors.iter().map(|(_, cursor)| cursor.to_string()).collect();
                let mut args: Vec<&[u8]> = vec![b"XREAD", b"COUNT", b"512", b"BLOCK", b"2000", b"STREAMS"];
                args.extend(keys.iter().map(Vec::as_slice));
                args.extend(ids.iter().map(String::as_bytes));
                resp::encode_command(&mut out, &args);
                out.clear();
            })
        });
        // What it does now (server/src/redis/streams/args.rs): the keys kept
        // while the streams are the same, the ids written into one buffer.
        let mut keys = xread_args::Keys::default();
        let mut ids = xread_args::Ids::default();
        group.bench_function(format!("kept/{n}"), |b| {
            b.iter(|| {
                let cursors = black_box(&cursors);
                let keys = keys.of(cursors.iter().map(|(name, _)| name), key_of);
                ids.fill(cursors.iter().map(|(_, cursor)| *cursor));
                let mut args: Vec<&[u8]> = Vec::with_capacity(6 + 2 * keys.len());
                args.extend_from_slice(&[b"XREAD", b"COUNT", b"512", b"BLOCK", b"2000", b"STREAMS"]);
                args.extend(keys.iter().map(Vec::as_slice));
                args.extend(ids.iter());
                resp::encode_command(&mut out, &args);
                out.clear();
            })
        });
        // The floor: the command's encoding alone, its arguments ready.
        let ids: Vec<String> = cursors.iter().map(|(_, cursor)| cursor.to_string()).collect();
        let keys: Vec<Vec<u8>> = cursors.iter().map(|(name, _)| key_of(name)).collect();
        let mut args: Vec<&[u8]> = vec![b"XREAD", b"COUNT", b"512", b"BLOCK", b"2000", b"STREAMS"];
        args.extend(keys.iter().map(Vec::as_slice));
        args.extend(ids.iter().map(String::as_bytes));
        group.bench_function(format!("encode_only/{n}"), |b| {
            b.iter(|| {
                resp::encode_command(&mut out, black_box(&args));
                out.clear();
            })
        });
    }
    group.finish();
}

fn ops(c: &mut Criterion) {
    let mut group = c.benchmark_group("op");
    group.throughput(Throughput::Elements(1));
    // simd-json parses in place, so each iteration gets its own copy (untimed).
    group.bench_function("subscribe_since", |b| {
        b.iter_batched(
            || SUBSCRIBE_SINCE.to_vec(),
            |mut text| op::parse(&mut text).expect("valid op"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1_000;
    /// Pushes per queue between two (untimed) drains: 256 frames of ~130 B stay
    /// well under the limit, so no push is ever refused.
    const DRAIN_EVERY: u64 = 256;
    const LIMIT: usize = 1 << 20;

    let frame: Bytes = FrameBuilder::new().stream_delivery(CHANNEL, entry_id(0), &data_entry());
    assert!(frame.len() as u64 * DRAIN_EVERY < LIMIT as u64);
    let mut queues: Vec<OutQueue> = (0..SUBSCRIBERS).map(|_| OutQueue::new(LIMIT)).collect();

    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    group.bench_function("fanout_1000", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(DRAIN_EVERY);
                let start = Instant::now();
                for _ in 0..chunk {
                    let frame = black_box(&frame);
                    for q in queues.iter_mut() {
                        q.push(frame.clone()).expect("queue under its limit");
                    }
                }
                timed += start.elapsed();
                // The writers' side: empty every queue, outside the timing.
                queues.iter_mut().for_each(OutQueue::clear);
                left -= chunk;
            }
            timed
        })
    });
    group.finish();
}

fn lane_spec(policy: SlowConsumer, min_interval: Option<Duration>) -> LaneSpec {
    LaneSpec {
        channel: Rc::from(CHANNEL),
        policy,
        stream: true,
        after: StreamId::ZERO,
        min_interval,
    }
}

fn policies(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1_000;
    const DRAIN_EVERY: u64 = 256;
    const LIMIT: usize = 1 << 20;
    let frame: Bytes = FrameBuilder::new().stream_delivery(CHANNEL, entry_id(0), &data_entry());
    let keys: Vec<Key> = (0..10).map(|k| Key::new(Bytes::from(format!("\"SYM-{k}\"")))).collect();
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    for (name, policy) in [
        ("drop_oldest_fanout_1000", SlowConsumer::DropOldest),
        ("conflate_fanout_1000", SlowConsumer::Conflate),
    ] {
        let mut queues: Vec<(OutQueue, LaneId)> = (0..SUBSCRIBERS)
            .map(|_| {
                let mut q = OutQueue::new(LIMIT);
                let lane = q.open_lane(lane_spec(policy, None));
                (q, lane)
            })
            .collect();
        let mut out = Vec::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut left = iters;
                let now = Instant::now();
                while left > 0 {
                    let chunk = left.min(DRAIN_EVERY);
                    let start = Instant::now();
                    for i in 0..chunk {
                        // One key read per message per core, shared by every lane.
                        let key = Some(keys[i as usize % keys.len()].clone());
                        for (q, lane) in queues.iter_mut() {
                            let delivery = Delivery {
                                frame: frame.clone(),
                                id: entry_id(i),
                                key: key.clone(),
                            };
                            black_box(q.push_delivery(*lane, delivery, now).expect("no overflow"));
                        }
                    }
                    timed += start.elapsed();
                    for (q, _) in queues.iter_mut() {
                        out.clear();
                        q.drain_into(&mut out, usize::MAX);
                    }
                    left -= chunk;
                }
                timed
            })
        });
    }

    // 10,000 throttled subscriptions (max_rate 10/s) each holding one
    // delivery, and the core's schedule releasing each once it is due: the
    // cost per throttled subscription per message.
    const THROTTLED: usize = 10_000;
    group.throughput(Throughput::Elements(THROTTLED as u64));
    let interval = Duration::from_millis(100);
    let mut queues: Vec<(OutQueue, LaneId)> = (0..THROTTLED)
        .map(|_| {
            let mut q = OutQueue::new(LIMIT);
            let lane = q.open_lane(lane_spec(SlowConsumer::Disconnect, Some(interval)));
            (q, lane)
        })
        .collect();
    let mut releases = Releases::default();
    let mut out = Vec::new();
    let mut now = Instant::now();
    group.bench_function("throttled_10000", |b| {
        b.iter(|| {
            // Each lane's first delivery opens its interval; the second waits.
            for (conn, (q, lane)) in queues.iter_mut().enumerate() {
                for n in 0..2 {
                    let delivery = Delivery {
                        frame: frame.clone(),
                        id: entry_id(n),
                        key: None,
                    };
                    if let Pushed::Throttled { due, schedule: true } =
                        q.push_delivery(*lane, delivery, now).expect("no overflow")
                    {
                        releases.schedule(due, conn as u64, *lane);
                    }
                }
            }
            now += interval;
            while let Some((conn, lane)) = releases.pop_due(now) {
                let (q, _) = &mut queues[conn as usize];
                black_box(q.release_due(lane, now).expect("no overflow"));
                out.clear();
                q.drain_into(&mut out, usize::MAX);
            }
            now += interval;
        })
    });

    // The steady state of a burst: every one of 10,000 throttled lanes already
    // waits for its next release, and one more message comes (conflated into
    // what waits). Releases happen at the rate, not per message.
    let mut held: Vec<(OutQueue, LaneId)> = (0..THROTTLED)
        .map(|_| {
            let mut q = OutQueue::new(LIMIT);
            let lane = q.open_lane(lane_spec(SlowConsumer::Disconnect, Some(Duration::from_secs(3600))));
            (q, lane)
        })
        .collect();
    let start = Instant::now();
    let mut n = 0;
    group.bench_function("throttled_hold_10000", |b| {
        b.iter(|| {
            n += 1;
            for (q, lane) in held.iter_mut() {
                let delivery = Delivery {
                    frame: frame.clone(),
                    id: entry_id(n),
                    key: None,
                };
                black_box(q.push_delivery(*lane, delivery, start).expect("no overflow"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, frames, xread, xread_args, ops, fanout, policies);
criterion_main!(benches);
