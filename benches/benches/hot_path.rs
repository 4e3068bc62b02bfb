//! The hot path of feedgate, through `feedgate-core`'s public API:
//!
//! - `frame/*`: one delivery frame built from a stream entry or a pub/sub body;
//! - `resp/xread_100`: one RESP3 XREAD reply of 100 entries decoded and read;
//! - `op/subscribe_since`: one client subscribe op parsed;
//! - `queue/fanout_1000`: one shared frame pushed to 1,000 subscriber queues.
//!
//! Inputs come from `feedgate_benches` (checked by its tests). Run with
//! `cargo bench -p feedgate-benches`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use feedgate_benches::{data_entry, entry_id, multi_field_entry, xread_reply, CHANNEL, JSON_100B, SUBSCRIBE_SINCE};
use feedgate_core::frame::FrameBuilder;
use feedgate_core::queue::OutQueue;
use feedgate_core::{op, resp};

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

    let fields = multi_field_entry();
    group.bench_function("stream_6_fields", |b| {
        b.iter(|| builder.stream_delivery(black_box(CHANNEL), black_box(id), black_box(&fields[..])))
    });

    group.bench_function("pubsub_json_100B", |b| {
        b.iter(|| builder.pubsub_delivery(black_box(CHANNEL), black_box(JSON_100B)))
    });
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

criterion_group!(benches, frames, xread, ops, fanout);
criterion_main!(benches);
