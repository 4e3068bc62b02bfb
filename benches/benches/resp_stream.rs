//! RESP decoding of one large reply that arrives in 16 KiB reads, as the
//! server's Redis reader sees a big XRANGE page or a catch-up XREAD:
//!
//! - `resp_stream/decoder/{1,4}MiB`: `feedgate_core::resp::Decoder`, which keeps
//!   its place between reads: the 4 MiB reply should cost about 4x the 1 MiB one;
//! - `resp_stream/reparse/{1,4}MiB`: redis-protocol's complete decoder called
//!   after every read, re-parsing from byte 0 (what the server did before):
//!   quadratic, about 16x.
//!
//! Run with `cargo bench -p feedgate-benches --bench resp_stream`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use feedgate_core::resp::{Decoder, Reply};
use redis_protocol::resp3::decode::complete::decode_bytes_mut;

/// Bytes per read, as the server's reader asks for.
const READ: usize = 16 * 1024;

/// A RESP3 XRANGE reply of entries `{data: <100 bytes>}` of about `bytes` bytes.
fn xrange_reply(bytes: usize) -> Vec<u8> {
    let data = "x".repeat(100);
    let entry = |i: usize| {
        let id = format!("1732700000000-{i}");
        format!("*2\r\n${}\r\n{id}\r\n*2\r\n$4\r\ndata\r\n$100\r\n{data}\r\n", id.len())
    };
    let per = entry(1_000_000).len();
    let n = bytes / per;
    let mut out = format!("*{n}\r\n").into_bytes();
    for i in 0..n {
        out.extend_from_slice(entry(1_000_000 + i).as_bytes());
    }
    out
}

/// Feeds `raw` in reads of [`READ`] bytes, decoding after each one.
fn feed(raw: &[u8], mut decode: impl FnMut(&mut BytesMut) -> Option<Reply>) -> Reply {
    let mut buf = BytesMut::with_capacity(READ);
    for piece in raw.chunks(READ) {
        buf.extend_from_slice(piece);
        if let Some(frame) = decode(&mut buf) {
            return frame;
        }
    }
    panic!("the reply never completed")
}

fn large_replies(c: &mut Criterion) {
    let mut group = c.benchmark_group("resp_stream");
    group.sample_size(10);
    for mib in [1usize, 4] {
        let raw = xrange_reply(mib << 20);
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function(format!("decoder/{mib}MiB"), |b| {
            b.iter_batched(
                Decoder::new,
                |mut decoder| feed(black_box(&raw), |buf| decoder.decode(buf).expect("valid RESP")),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("reparse/{mib}MiB"), |b| {
            b.iter(|| {
                feed(black_box(&raw), |buf| {
                    decode_bytes_mut(buf).expect("valid RESP").map(|(frame, _, _)| frame)
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, large_replies);
criterion_main!(benches);
