//! A connection's bounded outbound queue of shared frames, and the
//! slow-consumer policies of PROTOCOL.md section 6.
//!
//! Frames of `disconnect` channels, replies and control frames go in as they
//! are: past the byte bound the push fails and the caller closes with 4008.
//! A subscription of a `drop_oldest` or `conflate` channel opens a *lane*:
//! its deliveries carry the lane, and a full queue drops that lane's oldest
//! deliveries, announced by one `gap` just before the lane's next delivery,
//! or (conflate) a newer delivery of the same key replaces the queued one. A lane may also be
//! throttled (`max_rate`): deliveries wait in the lane, conflated by key,
//! and are released one per interval.
//!
//! Sequence numbers name slots: slot `seq` sits at `seq - head` in the deque.
//! A replaced or dropped delivery leaves a tombstone, so no removal shifts
//! the deque; tombstones are compacted away once they outnumber live slots.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channel::SlowConsumer;
use crate::{envelope, frame, StreamId};

/// The queue is over its byte limit: the client is not keeping up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound queue over its limit of {limit} bytes")]
pub struct Overflow {
    pub limit: usize,
}

/// What a queued frame costs beyond its bytes: its slot in the queue and its
/// allocation. Counting only wire bytes let a client that sends empty pings
/// and never reads queue millions of 2-byte pongs (~80 bytes each) before its
/// 4008: 320 MiB of RSS.
pub const FRAME_OVERHEAD: usize = 64;

/// What a queued `gap` counts against the limit: its slot and its JSON.
pub const GAP_COST: usize = FRAME_OVERHEAD + 128;

/// Tombstones tolerated before a compaction is considered.
const COMPACT_AFTER: usize = 64;

/// A lane: one `drop_oldest`, `conflate` or throttled subscription.
pub type LaneId = u32;

/// What pushes and drains did to deliveries, for the per-core counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Deliveries dropped by `drop_oldest` (or by `conflate` past the bound).
    pub dropped: u64,
    /// Queued deliveries replaced by a newer one of the same key.
    pub conflated: u64,
    /// Deliveries held back by `max_rate` (conflated or released later).
    pub throttled: u64,
    /// `gap` messages handed to the writer.
    pub gaps: u64,
}

impl Counts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: Counts) {
        self.dropped += other.dropped;
        self.conflated += other.conflated;
        self.throttled += other.throttled;
        self.gaps += other.gaps;
    }
}

/// How a lane was opened.
#[derive(Debug, Clone)]
pub struct LaneSpec {
    /// The channel, named in its `gap` messages.
    pub channel: Rc<str>,
    /// What a full queue does to this lane's deliveries.
    pub policy: SlowConsumer,
    /// Stream channels carry ids; a pub/sub channel's gap has no `after`.
    pub stream: bool,
    /// The id after which this subscription's deliveries start.
    pub after: StreamId,
    /// `max_rate`, as the least time between two deliveries.
    pub min_interval: Option<Duration>,
}

/// One delivery of a lane: its frame, stream id and key value.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub frame: Bytes,
    pub id: StreamId,
    /// The namespace `key`'s value in the payload; `None` conflates by channel.
    pub key: Option<Key>,
}

/// What a push into a lane did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued for the writer.
    Queued,
    /// Held back by the lane's `max_rate`; the caller must call
    /// [`OutQueue::release_due`] at `due` (it is newly due when `schedule`).
    Throttled { due: Instant, schedule: bool },
}

/// A slot's tag for a frame of no lane (a reply, a `disconnect` delivery).
const NO_LANE: u32 = u32::MAX;
/// A slot's tag for a delivery that was replaced or dropped.
const TOMBSTONE: u32 = u32::MAX - 1;
/// Lane ids stay below the tags.
const MAX_LANE: LaneId = u32::MAX - 2;

/// Hot path: 40 bytes (a frame and a tag), as small as a slot can be, since
/// every subscriber's queue holds one per frame; what lanes need to know
/// about a slot lives in the lane.
#[derive(Debug)]
struct Slot {
    frame: Bytes,
    tag: u32,
}

/// A key value, hashed once per message per core rather than once per lane.
#[derive(Debug, Clone)]
pub struct Key {
    hash: u64,
    bytes: Bytes,
}

impl Key {
    /// The key value `bytes`.
    pub fn new(bytes: Bytes) -> Self {
        // Seeded once per process: producers cannot pick keys that collide.
        static SEED: std::sync::OnceLock<std::collections::hash_map::RandomState> = std::sync::OnceLock::new();
        let hash = std::hash::BuildHasher::hash_one(SEED.get_or_init(Default::default), &bytes[..]);
        Self { hash, bytes }
    }

    /// The key of a lane that conflates by channel.
    fn channel() -> Self {
        Self::new(Bytes::new())
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.bytes == other.bytes
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Hashes lane ids and pre-hashed keys with one multiply: both are looked up
/// once per delivery per subscriber.
#[derive(Debug, Default, Clone, Copy)]
struct Premixed(u64);

impl std::hash::Hasher for Premixed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Premixed>>;

/// Deliveries of a lane lost since its last delivery out: announced with a
/// `gap` just before its next delivery goes to the writer.
#[derive(Debug, Clone, Copy)]
struct Hole {
    after: Option<StreamId>,
    dropped: u64,
    /// The hole lies before the lane's slots from this sequence number on.
    at: u64,
}

#[derive(Debug)]
struct Lane {
    spec: LaneSpec,
    /// This lane's queued deliveries (sequence number and stream id), oldest
    /// first; some may have been replaced since, and are skipped when met.
    queued: VecDeque<(u64, StreamId)>,
    /// Conflate: key value -> the slot holding its newest queued delivery.
    by_key: FastMap<Key, u64>,
    /// The id of the lane's last delivery handed to the writer.
    last_out: StreamId,
    /// Deliveries lost and not yet announced (charged [`GAP_COST`]).
    hole: Option<Hole>,
    throttle: Option<Throttle>,
}

/// A `max_rate` lane's waiting deliveries, conflated by key, oldest first.
#[derive(Debug)]
struct Throttle {
    interval: Duration,
    /// When the next delivery may go out.
    next_at: Option<Instant>,
    /// Whether a release is scheduled with the caller.
    scheduled: bool,
    waiting: BTreeMap<u64, Delivery>,
    by_key: FastMap<Key, u64>,
    next_seq: u64,
    bytes: usize,
    /// Waiting deliveries dropped to stay within the bound: a gap precedes
    /// the next release.
    lost: u64,
}

/// Frames waiting for a connection's writer, bounded in bytes (each frame
/// counted as its length plus [`FRAME_OVERHEAD`]).
#[derive(Debug)]
pub struct OutQueue {
    slots: VecDeque<Slot>,
    /// The sequence number of `slots[0]`.
    head: u64,
    bytes: usize,
    limit: usize,
    /// Slots that are frames (not tombstones).
    live: usize,
    /// Bytes of deliveries waiting in throttled lanes, all lanes together:
    /// bounded by half the limit, and not part of the writer's queue.
    throttled_bytes: usize,
    lanes: FastMap<LaneId, Lane>,
    next_lane: LaneId,
    counts: Counts,
}

impl OutQueue {
    /// An empty queue that holds at most `limit` bytes of frames.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: VecDeque::new(),
            head: 0,
            bytes: 0,
            limit,
            live: 0,
            throttled_bytes: 0,
            lanes: FastMap::default(),
            next_lane: 0,
            counts: Counts::default(),
        }
    }

    /// Queues `frame` (a refcount bump, not a copy), or refuses it when the queue
    /// would go over its limit.
    pub fn push(&mut self, frame: Bytes) -> Result<(), Overflow> {
        if self.bytes + cost(&frame) > self.limit && self.live > 0 {
            return Err(Overflow { limit: self.limit });
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Queues a frame that must go out whatever the limit (a close frame).
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.append(frame, NO_LANE);
    }

    /// Opens a lane for a subscription whose deliveries follow `spec`.
    pub fn open_lane(&mut self, spec: LaneSpec) -> LaneId {
        let id = self.next_lane;
        self.next_lane = if id >= MAX_LANE { 0 } else { id + 1 };
        let throttle = spec.min_interval.map(|interval| Throttle {
            interval,
            next_at: None,
            scheduled: false,
            waiting: BTreeMap::new(),
            by_key: FastMap::default(),
            next_seq: 0,
            bytes: 0,
            lost: 0,
        });
        let last_out = spec.after;
        self.lanes.insert(
            id,
            Lane {
                spec,
                queued: VecDeque::new(),
                by_key: FastMap::default(),
                last_out,
                hole: None,
                throttle,
            },
        );
        id
    }

    /// Closes a lane (unsubscribe, or its channel dropped): what it queued or
    /// held is dropped, so nothing of it goes out after a hole left unannounced.
    pub fn close_lane(&mut self, lane_id: LaneId) {
        let Some(lane) = self.lanes.remove(&lane_id) else {
            return;
        };
        if let Some(throttle) = lane.throttle {
            self.throttled_bytes -= throttle.bytes;
        }
        if lane.hole.is_some() {
            self.bytes -= GAP_COST;
        }
        for (seq, _) in lane.queued {
            if self.is_queued_frame(seq) {
                self.tombstone(seq);
            }
        }
    }

    /// Queues a delivery of `lane` under its policy and rate. Hot path for
    /// `drop_oldest` and `conflate` channels: a lane lookup, a slot push and,
    /// only when the queue is full, drops.
    pub fn push_delivery(&mut self, lane_id: LaneId, delivery: Delivery, now: Instant) -> Result<Pushed, Overflow> {
        let Some(lane) = self.lanes.get_mut(&lane_id) else {
            return self.push(delivery.frame).map(|()| Pushed::Queued);
        };
        if let Some(throttle) = &mut lane.throttle {
            let free = throttle.waiting.is_empty() && throttle.next_at.is_none_or(|at| at <= now);
            if !free {
                self.counts.throttled += 1;
                let due = self.hold(lane_id, delivery, now);
                return Ok(due);
            }
            throttle.next_at = Some(now + throttle.interval);
        }
        self.queue_delivery(lane_id, delivery).map(|()| Pushed::Queued)
    }

    /// Moves the throttled lane's oldest waiting delivery into the queue when
    /// it is due; returns when the next one is due, if any waits.
    pub fn release_due(&mut self, lane_id: LaneId, now: Instant) -> Result<Option<Instant>, Overflow> {
        let Some(throttle) = self.lanes.get_mut(&lane_id).and_then(|l| l.throttle.as_mut()) else {
            return Ok(None);
        };
        throttle.scheduled = false;
        if let Some(at) = throttle.next_at.filter(|&at| at > now) {
            if !throttle.waiting.is_empty() {
                throttle.scheduled = true;
                return Ok(Some(at));
            }
            return Ok(None);
        }
        let Some((_, delivery)) = throttle.waiting.pop_first() else {
            throttle.next_at = None;
            return Ok(None);
        };
        let key = delivery.key.clone().unwrap_or_else(Key::channel);
        throttle.by_key.remove(&key);
        throttle.bytes -= cost(&delivery.frame);
        self.throttled_bytes -= cost(&delivery.frame);
        let lost = std::mem::take(&mut throttle.lost);
        let next_at = now + throttle.interval;
        throttle.next_at = Some(next_at);
        let more = !throttle.waiting.is_empty();
        throttle.scheduled = more;
        if lost > 0 {
            self.record_drops(lane_id, lost, true);
        }
        self.queue_delivery(lane_id, delivery)?;
        Ok(more.then_some(next_at))
    }

    /// Moves up to `max` frames into `out`, oldest first; a lane's `gap` goes
    /// just before its next delivery, so a hole is announced once, whole.
    pub fn drain_into(&mut self, out: &mut Vec<Bytes>, max: usize) {
        let mut moved = 0;
        while moved < max {
            let Some(slot) = self.slots.front() else {
                break;
            };
            match slot.tag {
                TOMBSTONE => {
                    self.slots.pop_front();
                    self.head += 1;
                    continue;
                }
                NO_LANE => {}
                lane_id => {
                    if let Some(lane) = self.lanes.get_mut(&lane_id) {
                        if let Some(hole) = lane.hole.filter(|hole| self.head >= hole.at) {
                            if moved + 2 > max {
                                break;
                            }
                            lane.hole = None;
                            self.bytes -= GAP_COST;
                            // Exact only where every skipped id was dropped:
                            // conflation and throttling replace ids uncounted.
                            let exact = lane.spec.policy == SlowConsumer::DropOldest && lane.throttle.is_none();
                            let dropped = exact.then_some(hole.dropped);
                            out.push(frame::text(&envelope::gap(&lane.spec.channel, hole.after, dropped)));
                            self.counts.gaps += 1;
                            moved += 1;
                        }
                        let seq = self.head;
                        while let Some(&(queued, id)) = lane.queued.front() {
                            if queued > seq {
                                break;
                            }
                            lane.queued.pop_front();
                            if queued == seq {
                                lane.last_out = id;
                            }
                        }
                    }
                }
            }
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.head += 1;
            self.live -= 1;
            self.bytes -= cost(&slot.frame);
            out.push(slot.frame);
            moved += 1;
        }
        if self.slots.is_empty() {
            self.forget_positions();
        }
    }

    /// Records `n` deliveries of `lane` lost outside the queue (dropped while
    /// held for a replay): a gap precedes the lane's next delivery.
    pub fn note_lost(&mut self, lane: LaneId, n: u64) {
        self.record_drops(lane, n, true);
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// The most bytes the queue holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued for the writer, overhead included (what throttled lanes
    /// hold is bounded apart).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes held by throttled lanes, waiting for their next release.
    pub fn throttled_bytes(&self) -> usize {
        self.throttled_bytes
    }

    /// Whether nothing is queued for the writer.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Frames queued for the writer (a lane's pending `gap` not counted).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Drops everything queued, throttled deliveries included.
    pub fn clear(&mut self) {
        self.head += self.slots.len() as u64;
        self.slots.clear();
        self.bytes = 0;
        self.live = 0;
        for lane in self.lanes.values_mut() {
            lane.queued.clear();
            lane.by_key.clear();
            lane.hole = None;
            if let Some(throttle) = &mut lane.throttle {
                throttle.waiting.clear();
                throttle.by_key.clear();
                throttle.bytes = 0;
            }
        }
        self.throttled_bytes = 0;
    }

    fn append(&mut self, frame: Bytes, tag: u32) -> u64 {
        self.bytes += cost(&frame);
        self.live += 1;
        self.slots.push_back(Slot { frame, tag });
        self.head + self.slots.len() as u64 - 1
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let at = usize::try_from(seq.checked_sub(self.head)?).ok()?;
        self.slots.get_mut(at)
    }

    fn is_queued_frame(&self, seq: u64) -> bool {
        seq.checked_sub(self.head)
            .and_then(|at| self.slots.get(usize::try_from(at).ok()?))
            .is_some_and(|slot| slot.tag != TOMBSTONE)
    }

    /// Puts a delivery in the queue under its lane's policy.
    fn queue_delivery(&mut self, lane_id: LaneId, delivery: Delivery) -> Result<(), Overflow> {
        let Some(lane) = self.lanes.get(&lane_id) else {
            return self.push(delivery.frame);
        };
        let policy = lane.spec.policy;
        let key = match policy {
            SlowConsumer::Conflate => Some(delivery.key.clone().unwrap_or_else(Key::channel)),
            _ => None,
        };
        if let Some(key) = &key {
            if let Some(&seq) = lane.by_key.get(key) {
                if self.is_queued_frame(seq) {
                    self.tombstone(seq);
                    self.counts.conflated += 1;
                }
            }
        }
        let need = cost(&delivery.frame);
        if policy == SlowConsumer::Disconnect {
            if self.bytes + need > self.limit && self.live > 0 {
                return Err(Overflow { limit: self.limit });
            }
        } else {
            while self.bytes + need > self.limit && self.live > 0 {
                if !self.drop_oldest_of(lane_id) {
                    break;
                }
            }
            if self.bytes + need > self.limit && self.live > 0 {
                // The queue is full of other channels: this delivery is the
                // lane's oldest that is not out yet.
                self.record_drops(lane_id, 1, true);
                return Ok(());
            }
        }
        let seq = self.append(delivery.frame, lane_id);
        let head = self.head;
        let live = self.live;
        if let Some(lane) = self.lanes.get_mut(&lane_id) {
            lane.queued.push_back((seq, delivery.id));
            if let Some(key) = key {
                if lane.by_key.len() > 2 * live + COMPACT_AFTER {
                    lane.by_key.retain(|_, s| *s >= head);
                }
                lane.by_key.insert(key, seq);
            }
        }
        self.maybe_compact();
        Ok(())
    }

    fn tombstone(&mut self, seq: u64) {
        if let Some(slot) = self.slot_mut(seq) {
            let freed = cost(&slot.frame);
            slot.tag = TOMBSTONE;
            slot.frame = Bytes::new();
            self.bytes -= freed;
            self.live -= 1;
        }
    }

    /// Drops the lane's oldest queued delivery; false when it has none.
    fn drop_oldest_of(&mut self, lane_id: LaneId) -> bool {
        loop {
            let Some((seq, _)) = self.lanes.get_mut(&lane_id).and_then(|l| l.queued.pop_front()) else {
                return false;
            };
            if self.is_queued_frame(seq) {
                self.tombstone(seq);
                self.record_drops(lane_id, 1, false);
                return true;
            }
        }
    }

    /// Records `n` deliveries of the lane lost: the oldest it had queued
    /// (`behind_queued` false), or ones after everything it queued.
    fn record_drops(&mut self, lane_id: LaneId, n: u64, behind_queued: bool) {
        self.counts.dropped += n;
        let next_seq = self.head + self.slots.len() as u64;
        // The newest delivery still queued precedes a hole behind everything.
        let newest_queued = self.lanes.get(&lane_id).and_then(|lane| {
            let &(seq, id) = lane.queued.back()?;
            (behind_queued && self.is_queued_frame(seq)).then_some(id)
        });
        let Some(lane) = self.lanes.get_mut(&lane_id) else {
            return;
        };
        match &mut lane.hole {
            Some(hole) => {
                hole.dropped += n;
                if !behind_queued {
                    hole.at = 0;
                }
            }
            None => {
                let after = newest_queued.unwrap_or(lane.last_out);
                lane.hole = Some(Hole {
                    after: lane.spec.stream.then_some(after),
                    dropped: n,
                    at: if behind_queued { next_seq } else { 0 },
                });
                self.bytes += GAP_COST;
            }
        }
    }

    /// Holds a throttled delivery, conflated by key; returns when it is due.
    fn hold(&mut self, lane_id: LaneId, delivery: Delivery, now: Instant) -> Pushed {
        // What every throttled lane of the connection holds may take half the
        // bound; past it this lane's oldest waiting delivery is lost, announced.
        let budget = self.limit / 2;
        let mut total = self.throttled_bytes;
        let Some(throttle) = self.lanes.get_mut(&lane_id).and_then(|l| l.throttle.as_mut()) else {
            return Pushed::Queued;
        };
        let key = delivery.key.clone().unwrap_or_else(Key::channel);
        if let Some(old) = throttle.by_key.remove(&key) {
            if let Some(replaced) = throttle.waiting.remove(&old) {
                throttle.bytes -= cost(&replaced.frame);
                total -= cost(&replaced.frame);
            }
        }
        let need = cost(&delivery.frame);
        while total + need > budget {
            let Some((_, oldest)) = throttle.waiting.pop_first() else {
                break;
            };
            throttle.by_key.remove(&oldest.key.unwrap_or_else(Key::channel));
            throttle.bytes -= cost(&oldest.frame);
            total -= cost(&oldest.frame);
            throttle.lost += 1;
        }
        throttle.bytes += need;
        let seq = throttle.next_seq;
        throttle.next_seq += 1;
        throttle.by_key.insert(key, seq);
        throttle.waiting.insert(seq, delivery);
        let due = throttle.next_at.unwrap_or(now);
        let schedule = !throttle.scheduled;
        throttle.scheduled = true;
        self.throttled_bytes = total + need;
        Pushed::Throttled { due, schedule }
    }

    /// With nothing queued, no stored position can point at a live slot.
    fn forget_positions(&mut self) {
        for lane in self.lanes.values_mut() {
            if !lane.queued.is_empty() {
                lane.queued.clear();
            }
            if !lane.by_key.is_empty() {
                lane.by_key.clear();
            }
        }
    }

    /// Removes tombstones once they outnumber live slots, renumbering what the
    /// lanes point at.
    fn maybe_compact(&mut self) {
        let dead = self.slots.len() - self.live;
        if dead < COMPACT_AFTER || dead < self.live {
            return;
        }
        let head = self.head;
        let mut renumbered = vec![u64::MAX; self.slots.len()];
        let mut kept = VecDeque::with_capacity(self.live);
        for (at, slot) in self.slots.drain(..).enumerate() {
            if slot.tag != TOMBSTONE {
                renumbered[at] = head + kept.len() as u64;
                kept.push_back(slot);
            }
        }
        self.slots = kept;
        let map = |seq: u64| -> Option<u64> {
            let at = usize::try_from(seq.checked_sub(head)?).ok()?;
            renumbered.get(at).copied().filter(|&s| s != u64::MAX)
        };
        let next = head + self.slots.len() as u64;
        let first_kept_from = |seq: u64| -> u64 {
            let from = usize::try_from(seq.saturating_sub(head)).unwrap_or(usize::MAX);
            renumbered
                .iter()
                .skip(from)
                .find(|&&s| s != u64::MAX)
                .copied()
                .unwrap_or(next)
        };
        for lane in self.lanes.values_mut() {
            if let Some(hole) = &mut lane.hole {
                if hole.at > head {
                    hole.at = first_kept_from(hole.at);
                }
            }
            lane.queued = lane.queued.iter().filter_map(|&(s, id)| Some((map(s)?, id))).collect();
            lane.by_key = lane
                .by_key
                .drain()
                .filter_map(|(key, s)| Some((key, map(s)?)))
                .collect();
        }
    }
}

/// When throttled lanes of a core's connections are due, soonest first: one
/// entry per lane with deliveries waiting, not a timer per message.
#[derive(Debug, Default)]
pub struct Releases {
    heap: BinaryHeap<Reverse<(Instant, u64, LaneId)>>,
}

impl Releases {
    /// Schedules `lane` of connection `conn` at `at`; true when that is now
    /// the soonest release (whoever sleeps until the soonest must wake).
    pub fn schedule(&mut self, at: Instant, conn: u64, lane: LaneId) -> bool {
        let sooner = self.next().is_none_or(|next| at < next);
        self.heap.push(Reverse((at, conn, lane)));
        sooner
    }

    /// When the soonest release is due.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, ..))| *at)
    }

    /// Takes the soonest release when it is due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(u64, LaneId)> {
        let Reverse((at, conn, lane)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((conn, lane))
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// How many releases are scheduled.
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

/// What `frame` counts against a queue's limit: its length plus
/// [`FRAME_OVERHEAD`]. Frames held for a subscription are charged the same.
pub fn cost(frame: &Bytes) -> usize {
    frame.len() + FRAME_OVERHEAD
}

#[cfg(test)]
mod tests;
