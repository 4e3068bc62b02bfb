//! One hot channel's subscriber table on a core (server/src/hub/subs.rs,
//! built here on its own), against the plain `Vec` it replaced, whose every
//! lookup and removal scanned the list:
//!
//! - `hub/leave_10000/{scan,indexed}`: 10,000 subscribers of one channel all
//!   leaving (a mass disconnect), in no particular order;
//! - `hub/join_10000/{scan,indexed}`: 10,000 clients subscribing to it, each
//!   with the four lookups of a stream subscribe (`joined_at`, `take_dropped`,
//!   `held_bytes`, `release`);
//! - `hub/fanout_scan_10000/{vec,indexed}`: fan-out's walk over every
//!   subscriber, which must stay one contiguous pass.
//!
//! `scan` is the removed code, kept here as it was in `Hub::leave` and the
//! lookups (`subs.iter().find(|s| s.conn.id == conn_id)`). Subscribers and
//! connections are about the size of the server's (`Sub`, `Conn`), so each
//! comparison reads through a pointer to another allocation, as it did.
//!
//! Run with `cargo bench -p feedgate-benches --bench hub`.

use std::hint::black_box;
use std::rc::Rc;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput};

// Its unit tests compile here too (benches build with cfg(test)) and go unused.
#[allow(unused)]
#[path = "../../server/src/hub/subs.rs"]
mod subs;

use subs::{Keyed, Subs};

const SUBSCRIBERS: u64 = 10_000;

/// A connection's state, elsewhere in memory; the id comes first, as the
/// server reads it.
struct Conn {
    id: u64,
    rest: [u64; 40],
}

/// One subscription, about the size of the hub's `Sub`.
struct Sub {
    conn: Rc<Conn>,
    state: [u64; 24],
}

impl Keyed for Sub {
    fn key(&self) -> u64 {
        self.conn.id
    }
}

/// Connection ids as a core hands them out (`serial * 1024 + core`), in the
/// order the clients subscribed.
fn ids() -> Vec<u64> {
    (1..=SUBSCRIBERS).map(|serial| serial * 1024).collect()
}

/// `ids` in a fixed pseudo-random order: clients do not leave in the order
/// they came.
fn shuffled(mut ids: Vec<u64>) -> Vec<u64> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..ids.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.swap(i, (x % (i as u64 + 1)) as usize);
    }
    ids
}

fn sub(id: u64) -> Sub {
    Sub {
        conn: Rc::new(Conn { id, rest: [id; 40] }),
        state: [0; 24],
    }
}

/// A channel's subscriber table: the old `Vec`, or the hub's `Subs`.
trait Table: Default {
    fn add(&mut self, sub: Sub);
    fn find(&mut self, id: u64) -> Option<&mut Sub>;
    fn take(&mut self, id: u64);
}

/// The removed code: every lookup and removal scans the list.
impl Table for Vec<Sub> {
    fn add(&mut self, sub: Sub) {
        self.push(sub);
    }
    fn find(&mut self, id: u64) -> Option<&mut Sub> {
        self.iter_mut().find(|s| s.conn.id == id)
    }
    fn take(&mut self, id: u64) {
        self.retain(|s| s.conn.id != id);
    }
}

impl Table for Subs<Sub> {
    fn add(&mut self, sub: Sub) {
        self.insert(sub);
    }
    fn find(&mut self, id: u64) -> Option<&mut Sub> {
        self.get_mut(id)
    }
    fn take(&mut self, id: u64) {
        black_box(self.remove(id));
    }
}

/// `leave_10000/<name>` and `join_10000/<name>` for table `T`.
fn leave_and_join<T: Table>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, order: &[u64]) {
    group.bench_function(format!("leave_10000/{name}"), |b| {
        b.iter_batched(
            || {
                let mut subs = T::default();
                ids().into_iter().for_each(|id| subs.add(sub(id)));
                subs
            },
            |mut subs| {
                for &id in order {
                    subs.take(id);
                }
                subs
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function(format!("join_10000/{name}"), |b| {
        b.iter_batched(
            || ids().into_iter().map(sub).collect::<Vec<Sub>>(),
            |new| {
                let mut subs = T::default();
                for s in new {
                    let id = s.conn.id;
                    subs.add(s);
                    for _ in 0..4 {
                        black_box(subs.find(id));
                    }
                }
                subs
            },
            BatchSize::LargeInput,
        )
    });
}

fn leave(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SUBSCRIBERS));
    let order = shuffled(ids());
    leave_and_join::<Vec<Sub>>(&mut group, "scan", &order);
    leave_and_join::<Subs<Sub>>(&mut group, "indexed", &order);

    // Fan-out touches each subscriber and its connection once.
    let mut list: Vec<Sub> = ids().into_iter().map(sub).collect();
    group.bench_function("fanout_scan_10000/vec", |b| {
        b.iter(|| {
            for s in list.iter_mut() {
                s.state[0] += s.conn.rest[0];
            }
        })
    });
    let mut table = Subs::default();
    ids().into_iter().for_each(|id| table.insert(sub(id)));
    group.bench_function("fanout_scan_10000/indexed", |b| {
        b.iter(|| {
            for s in table.as_mut_slice() {
                s.state[0] += s.conn.rest[0];
            }
        })
    });
    group.finish();
}

criterion_group!(benches, leave);
criterion_main!(benches);
