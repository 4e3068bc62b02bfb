//! The core's fan-out table: channel -> local subscribers.
//!
//! A channel exists on a core while at least one local client holds it; the
//! first subscriber makes the core subscribe in Redis, the last one leaving
//! makes it stop (PROTOCOL.md: the union of what local clients want).

use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use feedgate_core::channel::{Namespace, SlowConsumer, Source};
use feedgate_core::frame::FrameBuilder;
use feedgate_core::queue::{self, Delivery, Key, LaneId, LaneSpec, Pushed, Releases};
use feedgate_core::resp::Entry;
use feedgate_core::{key, StreamId};

use crate::conn::{close_code, Conn, SLOW_CONSUMER_REASON};
use crate::notify::{Event, Notify};

mod subs;
use subs::{Keyed, Subs};

/// Whether the core's Redis subscription for a channel is in place.
pub enum Phase {
    /// Being set up; subscribers wait for the event.
    Starting(Rc<Event>),
    /// Messages flow.
    Live,
}

/// How a subscription is delivered: its namespace's policy and key, and the
/// client's `max_rate`.
#[derive(Debug, Clone, Default)]
pub struct How {
    pub source: Source,
    pub policy: SlowConsumer,
    /// The namespace's `key` field.
    pub key: Option<Rc<str>>,
    /// `max_rate`, as the least time between two deliveries.
    pub min_interval: Option<Duration>,
}

impl How {
    /// A subscription of a channel in `namespace`, at most one delivery per
    /// `min_interval` when given.
    pub fn new(namespace: &Namespace, min_interval: Option<Duration>) -> Self {
        Self {
            source: namespace.source,
            policy: namespace.slow_consumer,
            key: namespace.key.as_deref().map(Rc::from),
            min_interval,
        }
    }

    /// A `disconnect` subscription of `source` without key or rate.
    #[cfg(test)]
    pub fn plain(source: Source) -> Self {
        Self {
            source,
            ..Self::default()
        }
    }

    /// Whether deliveries go through a lane of the connection's queue.
    fn needs_lane(&self) -> bool {
        self.policy != SlowConsumer::Disconnect || self.min_interval.is_some()
    }
}

/// One channel on this core.
pub struct Channel {
    pub name: Rc<str>,
    pub source: Source,
    /// The namespace's `key` field, read once per message when set.
    key: Option<Rc<str>>,
    /// Whether some subscriber's deliveries go through a lane (and so need
    /// the key read off each message).
    lanes: usize,
    pub phase: Phase,
    /// Streams: the last id delivered on this core; live reads resume after it.
    pub cursor: StreamId,
    /// Found and removed by connection id in O(1); fan-out scans it as one slice.
    subs: Subs<Sub>,
}

struct Sub {
    conn: Rc<Conn>,
    /// Where this subscriber's live deliveries start (set once the channel is live).
    joined_at: Option<StreamId>,
    /// Live frames held back while the subscription is being set up (reply,
    /// history), so none is lost or sent before the `subscribed` reply.
    /// Boxed: it lives only while the subscription is set up, and inline it
    /// made every live subscriber 64 bytes larger.
    held: Option<Box<Held>>,
    /// Stream ids up to this one were already sent (a `since` ahead of the
    /// core's cursor): live frames at or before it are skipped, never repeated.
    skip_through: Option<StreamId>,
    /// The lane of the connection's queue, once released, for `drop_oldest`,
    /// `conflate` or `max_rate` subscriptions.
    lane: Option<LaneId>,
    how: How,
}

impl Keyed for Sub {
    fn key(&self) -> u64 {
        self.conn.id
    }
}

#[derive(Default)]
struct Held {
    frames: Vec<HeldFrame>,
    bytes: usize,
    /// Stream frames up to this id were dropped when the held ones outgrew
    /// the queue limit; the replay reads them from Redis instead.
    dropped_through: Option<StreamId>,
    /// Pub/sub frames of a `drop_oldest` or `conflate` channel dropped while
    /// held: announced with a gap once released.
    lost: u64,
}

/// A live frame held back while its subscription is set up.
struct HeldFrame {
    id: StreamId,
    frame: Bytes,
    key: Option<Key>,
    /// A retention `gap`, not a delivery.
    gap: bool,
}

/// What joining a channel found.
pub enum Joined {
    /// The caller created the channel and must set it up, then call
    /// [`Hub::set_live`] or [`Hub::fail`].
    First(Rc<Event>),
    /// Someone else is setting it up: wait for the event.
    Wait(Rc<Event>),
    /// Already live.
    Live,
}

/// Channel name -> channel, for one core.
#[derive(Default)]
pub struct Hub {
    channels: HashMap<Rc<str>, Channel>,
    /// Throttled lanes waiting for their next release.
    throttled: Releases,
    throttled_conns: HashMap<u64, Weak<Conn>>,
    /// Woken when a release becomes due sooner than before.
    pub throttle_wake: Rc<Notify>,
}

impl Hub {
    /// Adds `conn` to `name` with its live frames held back until [`Hub::release`].
    pub fn join(&mut self, name: &str, how: &How, conn: &Rc<Conn>) -> (Rc<str>, Joined) {
        let channel = self.channels.entry(Rc::from(name)).or_insert_with_key(|key| Channel {
            name: key.clone(),
            source: how.source,
            key: how.key.clone(),
            lanes: 0,
            phase: Phase::Starting(Rc::new(Event::default())),
            cursor: StreamId::ZERO,
            subs: Subs::default(),
        });
        let first = channel.subs.is_empty() && matches!(channel.phase, Phase::Starting(_));
        let joined_at = matches!(channel.phase, Phase::Live).then_some(channel.cursor);
        channel.subs.insert(Sub {
            conn: conn.clone(),
            joined_at,
            held: Some(Box::default()),
            skip_through: None,
            lane: None,
            how: how.clone(),
        });
        let joined = match &channel.phase {
            Phase::Live => Joined::Live,
            Phase::Starting(event) if first => Joined::First(event.clone()),
            Phase::Starting(event) => Joined::Wait(event.clone()),
        };
        (channel.name.clone(), joined)
    }

    /// The channel is subscribed in Redis; a stream's live reads start after `cursor`.
    pub fn set_live(&mut self, name: &str, cursor: StreamId) {
        let Some(channel) = self.channels.get_mut(name) else {
            return;
        };
        if let Phase::Starting(event) = std::mem::replace(&mut channel.phase, Phase::Live) {
            channel.cursor = cursor;
            for sub in channel.subs.as_mut_slice() {
                sub.joined_at.get_or_insert(cursor);
            }
            event.set();
        }
    }

    /// Setting the channel up failed: it is removed and its waiters woken.
    pub fn fail(&mut self, name: &str) {
        if let Some(channel) = self.channels.remove(name) {
            if let Phase::Starting(event) = channel.phase {
                event.set();
            }
        }
    }

    /// Where `conn`'s deliveries on `name` start, once the channel is live.
    pub fn joined_at(&self, name: &str, conn_id: u64) -> Option<StreamId> {
        self.channels.get(name)?.subs.get(conn_id)?.joined_at
    }

    /// Sends `conn` the frames held for it on `name` (only stream ids after
    /// `after`), then lets live frames through.
    pub fn release(&mut self, name: &str, conn_id: u64, after: Option<StreamId>) {
        let Some(channel) = self.channels.get_mut(name) else {
            return;
        };
        let Some(sub) = channel.subs.get_mut(conn_id) else {
            return;
        };
        let mut due = Vec::new();
        if let Some(held) = sub.held.take() {
            // The lane opens first, so held frames obey the policy and rate,
            // and a loss while held is announced before what followed it.
            if sub.how.needs_lane() && sub.lane.is_none() {
                let lane = sub.conn.open_lane(LaneSpec {
                    channel: channel.name.clone(),
                    policy: sub.how.policy,
                    stream: channel.source == Source::Stream,
                    after: after.unwrap_or(StreamId::ZERO),
                    min_interval: sub.how.min_interval,
                });
                sub.lane = Some(lane);
                channel.lanes += 1;
                if held.lost > 0 {
                    sub.conn.note_lost(lane, held.lost);
                }
            }
            let now = Instant::now();
            for HeldFrame { id, frame, key, gap } in held.frames {
                if after.is_some_and(|after| id <= after) {
                    continue;
                }
                match sub.lane {
                    // A retention gap is not a delivery: no policy applies to it.
                    Some(lane) if !gap => send_to_lane(&sub.conn, lane, Delivery { frame, id, key }, now, &mut due),
                    _ => sub.conn.send(frame),
                }
            }
        }
        sub.skip_through = after;
        self.schedule(due);
    }

    /// What the frames held for `conn` on `name` will cost its queue when
    /// released (each counted as in the queue, overhead included).
    pub fn held_bytes(&self, name: &str, conn_id: u64) -> usize {
        self.channels
            .get(name)
            .and_then(|c| c.subs.get(conn_id))
            .and_then(|s| s.held.as_ref())
            .map_or(0, |held| held.bytes)
    }

    /// Takes the id through which held stream frames of `conn` on `name` were
    /// dropped (they outgrew the queue limit while its replay ran), if any.
    pub fn take_dropped(&mut self, name: &str, conn_id: u64) -> Option<StreamId> {
        let channel = self.channels.get_mut(name)?;
        let sub = channel.subs.get_mut(conn_id)?;
        sub.held.as_mut()?.dropped_through.take()
    }

    /// Removes `conn` from `name`; returns the channel when it was the last
    /// subscriber (the caller then drops the Redis subscription).
    pub fn leave(&mut self, name: &str, conn_id: u64) -> Option<Channel> {
        let channel = self.channels.get_mut(name)?;
        // O(1): a mass disconnect from one hot channel used to scan the list
        // once per leaver (quadratic; results/benches.md, `hub/leave_10000`).
        if let Some(Sub {
            conn, lane: Some(lane), ..
        }) = channel.subs.remove(conn_id)
        {
            conn.close_lane(lane);
            channel.lanes -= 1;
        }
        if channel.subs.is_empty() {
            let channel = self.channels.remove(name)?;
            if let Phase::Starting(event) = &channel.phase {
                event.set();
            }
            return Some(channel);
        }
        None
    }

    /// Whether `name` is live on this core.
    pub fn is_live(&self, name: &str) -> bool {
        matches!(self.channels.get(name), Some(Channel { phase: Phase::Live, .. }))
    }

    /// Live stream channels and their cursors: what the stream reader reads.
    pub fn stream_cursors(&self) -> Vec<(Rc<str>, StreamId)> {
        self.channels
            .values()
            .filter(|c| c.source == Source::Stream && matches!(c.phase, Phase::Live))
            .map(|c| (c.name.clone(), c.cursor))
            .collect()
    }

    /// Channels of `source` in the given phase (`live` or starting).
    pub fn channels_of(&self, source: Source, live: bool) -> Vec<Rc<str>> {
        self.channels
            .values()
            .filter(|c| c.source == source && matches!(c.phase, Phase::Live) == live)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Sends each new entry of stream `name` to its subscribers. Hot path: the
    /// frame is built once and every subscriber gets a clone of the same `Bytes`.
    pub fn deliver_stream(&mut self, name: &str, entries: &[Entry], frames: &mut FrameBuilder) {
        // A channel still starting sets its cursor when it goes live; entries
        // read before that would be read again after it.
        let Some(channel) = self.channels.get_mut(name).filter(|c| matches!(c.phase, Phase::Live)) else {
            return;
        };
        let mut due = Vec::new();
        for entry in entries {
            // Ids at or before the cursor were delivered already (a re-read
            // after a reconnect): never twice.
            if entry.id <= channel.cursor {
                continue;
            }
            channel.cursor = entry.id;
            let frame = frames.stream_delivery(&channel.name, entry.id, &entry.fields);
            // Read once per message per core, and only when a lane uses it.
            let key = match &channel.key {
                Some(field) if channel.lanes > 0 => {
                    key::of_entry(&entry.fields, field).map(|k| Key::new(Bytes::copy_from_slice(k)))
                }
                _ => None,
            };
            due.extend(fan_out(
                channel.subs.as_mut_slice(),
                Source::Stream,
                entry.id,
                &frame,
                key,
            ));
        }
        self.schedule(due);
    }

    /// Sends one pub/sub message of `name` to its subscribers.
    pub fn deliver_pubsub(&mut self, name: &str, body: &[u8], frames: &mut FrameBuilder) {
        let Some(channel) = self.channels.get_mut(name) else {
            return;
        };
        if !matches!(channel.phase, Phase::Live) {
            return;
        }
        let frame = frames.pubsub_delivery(&channel.name, body);
        let key = match &channel.key {
            Some(field) if channel.lanes > 0 => {
                key::top_level_field(body, field).map(|k| Key::new(Bytes::copy_from_slice(k)))
            }
            _ => None,
        };
        let due = fan_out(channel.subs.as_mut_slice(), Source::Pubsub, StreamId::ZERO, &frame, key);
        self.schedule(due);
    }

    /// Remembers throttled lanes that have a release due.
    fn schedule(&mut self, due: Vec<(Instant, Rc<Conn>, LaneId)>) {
        for (at, conn, lane) in due {
            self.throttled_conns
                .entry(conn.id)
                .or_insert_with(|| Rc::downgrade(&conn));
            if self.throttled.schedule(at, conn.id, lane) {
                self.throttle_wake.notify();
            }
        }
    }

    /// When the soonest throttled release is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.throttled.next()
    }

    /// Releases every throttled delivery due by `now`, one per lane, and
    /// schedules the lanes' next ones.
    pub fn release_due(&mut self, now: Instant) {
        let mut again = Vec::new();
        while let Some((conn_id, lane)) = self.throttled.pop_due(now) {
            let Some(conn) = self.throttled_conns.get(&conn_id).and_then(Weak::upgrade) else {
                self.throttled_conns.remove(&conn_id);
                continue;
            };
            if let Some(next) = conn.release_due(lane, now) {
                again.push((next, conn, lane));
            }
        }
        if self.throttled.is_empty() {
            self.throttled_conns.clear();
        } else if self.throttled_conns.len() > 64 + 2 * self.throttled.len() {
            // Connections that closed while idle are forgotten here.
            self.throttled_conns.retain(|_, conn| conn.strong_count() > 0);
        }
        self.schedule(again);
    }

    /// Drops `name`, telling each subscriber why with an error; returns the
    /// connections that held it.
    pub fn drop_channel(&mut self, name: &str) -> Vec<Rc<Conn>> {
        let Some(channel) = self.channels.remove(name) else {
            return Vec::new();
        };
        channel
            .subs
            .into_vec()
            .into_iter()
            .map(|s| {
                if let Some(lane) = s.lane {
                    s.conn.close_lane(lane);
                }
                s.conn
            })
            .collect()
    }

    /// Tells the subscribers of stream `name` that entries with ids between
    /// `after` (the channel's cursor, the last id delivered) and `before` (the
    /// next id to be delivered) were removed by retention before the core read
    /// them: `dropped` of them, where known (PROTOCOL.md section 6). Call it
    /// just before delivering `before`, with no await in between, so the gap
    /// frame is in order with the channel's deliveries for everyone who holds
    /// it. Does nothing when the channel's cursor is no longer `after` (it
    /// was set up again meanwhile: the next read decides afresh).
    pub fn announce_gap(&mut self, name: &str, after: StreamId, before: StreamId, dropped: Option<u64>) {
        use feedgate_core::{envelope, frame};
        let Some(channel) = self
            .channels
            .get_mut(name)
            .filter(|c| matches!(c.phase, Phase::Live) && c.cursor == after)
        else {
            return;
        };
        let gap = frame::text(&envelope::gap(name, Some(after), dropped));
        // The smallest id after `after`: a held frame goes out on release only
        // if its id is past the end of the client's history.
        let first_missing = match after.seq.checked_add(1) {
            Some(seq) => StreamId::new(after.ms, seq),
            None => StreamId::new(after.ms.saturating_add(1), 0),
        };
        for sub in channel.subs.as_mut_slice() {
            match (&mut sub.held, sub.skip_through) {
                // Held while its replay runs: the gap waits in place among the
                // held frames. A replay that ends at or before `after` leaves
                // the hole to live delivery, and the gap goes out with the
                // frames after it; one that read past `after` read the hole
                // from Redis itself, and the gap is not sent.
                (Some(held), _) => {
                    held.bytes += queue::cost(&gap);
                    held.frames.push(HeldFrame {
                        id: first_missing,
                        frame: gap.clone(),
                        key: None,
                        gap: true,
                    });
                }
                // Its history already covers the whole hole.
                (None, Some(through)) if through >= before => {}
                // Its history ends inside the hole: the gap starts there, and
                // how much of the hole it missed is not known.
                (None, Some(through)) if through > after => {
                    sub.conn.send_json(&envelope::gap(name, Some(through), None));
                }
                (None, _) => sub.conn.send(gap.clone()),
            }
        }
    }
}

/// Queues a delivery into `conn`'s lane; a throttled lane newly due is added
/// to `due` for the core's schedule.
fn send_to_lane(
    conn: &Rc<Conn>,
    lane: LaneId,
    delivery: Delivery,
    now: Instant,
    due: &mut Vec<(Instant, Rc<Conn>, LaneId)>,
) {
    if let Some(Pushed::Throttled {
        due: at,
        schedule: true,
    }) = conn.send_delivery(lane, delivery, now)
    {
        due.push((at, conn.clone(), lane));
    }
}

/// Queues `frame` for every subscriber; returns the throttled lanes that now
/// have a release to schedule.
fn fan_out(
    subs: &mut [Sub],
    source: Source,
    id: StreamId,
    frame: &Bytes,
    key: Option<Key>,
) -> Vec<(Instant, Rc<Conn>, LaneId)> {
    let mut due = Vec::new();
    // Read once, and only when a lane needs it: `disconnect` fan-out has no use for it.
    let mut now = None;
    for sub in subs.iter_mut() {
        match &mut sub.held {
            None => {
                match sub.skip_through {
                    Some(through) if id <= through => continue,
                    Some(_) => sub.skip_through = None,
                    None => {}
                }
                match sub.lane {
                    // Hot path for `disconnect` subscriptions: a refcount bump
                    // and a queue push.
                    None => sub.conn.send(frame.clone()),
                    Some(lane) => {
                        let delivery = Delivery {
                            frame: frame.clone(),
                            id,
                            key: key.clone(),
                        };
                        let now = *now.get_or_insert_with(Instant::now);
                        send_to_lane(&sub.conn, lane, delivery, now, &mut due);
                    }
                }
            }
            Some(held) if held.bytes + queue::cost(frame) <= sub.conn.queue_limit() => {
                held.bytes += queue::cost(frame);
                held.frames.push(HeldFrame {
                    id,
                    frame: frame.clone(),
                    key: key.clone(),
                    gap: false,
                });
            }
            // Held frames outgrew the queue limit while a replay ran (its core
            // is catching up on a burst, say). A stream's can be read again from
            // Redis: drop them and let the replay go on through this id, rather
            // than close a client that reads at normal speed.
            Some(held) if source == Source::Stream => {
                **held = Held {
                    dropped_through: Some(id),
                    ..Held::default()
                };
            }
            // A pub/sub channel that may drop: drop, and announce it on release.
            Some(held) if sub.how.policy != SlowConsumer::Disconnect => {
                let lost = held.lost + held.frames.len() as u64 + 1;
                **held = Held {
                    lost,
                    ..Held::default()
                };
            }
            Some(_) => {
                sub.held = Some(Box::default());
                sub.conn.close(close_code::SLOW_CONSUMER, SLOW_CONSUMER_REASON);
            }
        }
    }
    due
}

#[cfg(test)]
mod tests {
    //! The handover from history to live, made deterministic: which path a
    //! subscriber takes no longer depends on which core it landed on.
    use super::*;
    use feedgate_core::config::Limits;
    use feedgate_core::frame;
    use feedgate_core::queue::FRAME_OVERHEAD;

    fn conn(id: u64) -> Rc<Conn> {
        Rc::new(Conn::new(id, -1, &Limits::default()))
    }

    fn entry(ms: u64) -> Entry {
        Entry {
            id: StreamId::new(ms, 0),
            fields: vec![(Bytes::from_static(b"data"), Bytes::from(ms.to_string()))],
        }
    }

    /// The ids of the stream deliveries queued for `conn`, in order.
    fn sent_ids(conn: &Conn) -> Vec<u64> {
        conn.take_queued()
            .iter()
            .map(|f| {
                let body: serde_json::Value = serde_json::from_slice(frame::body(f)).unwrap();
                body["id"].as_str().unwrap().split('-').next().unwrap().parse().unwrap()
            })
            .collect()
    }

    fn deliver(hub: &mut Hub, ids: &[u64]) {
        let entries: Vec<Entry> = ids.iter().map(|&ms| entry(ms)).collect();
        hub.deliver_stream("s", &entries, &mut FrameBuilder::new());
    }

    #[test]
    fn the_first_subscriber_sets_up_and_later_ones_wait_for_it() {
        let mut hub = Hub::default();
        let (a, b) = (conn(1), conn(2));
        assert!(matches!(
            hub.join("s", &How::plain(Source::Stream), &a).1,
            Joined::First(_)
        ));
        let Joined::Wait(event) = hub.join("s", &How::plain(Source::Stream), &b).1 else {
            panic!("a concurrent first subscriber waits");
        };
        assert!(!event.is_set());
        assert_eq!(hub.joined_at("s", 1), None, "no position before the channel is live");
        hub.set_live("s", StreamId::new(5, 0));
        assert!(event.is_set());
        assert_eq!(hub.joined_at("s", 1), Some(StreamId::new(5, 0)));
        assert_eq!(hub.joined_at("s", 2), Some(StreamId::new(5, 0)));
        // Entries at or before the cursor were read before the channel went live.
        deliver(&mut hub, &[4, 5, 6]);
        hub.release("s", 1, Some(StreamId::new(5, 0)));
        hub.release("s", 2, Some(StreamId::new(5, 0)));
        assert_eq!(sent_ids(&a), [6]);
        assert_eq!(sent_ids(&b), [6]);
    }

    #[test]
    fn joining_a_live_channel_starts_at_its_cursor_and_holds_frames_until_released() {
        let mut hub = Hub::default();
        let (a, b) = (conn(1), conn(2));
        hub.join("s", &How::plain(Source::Stream), &a);
        hub.set_live("s", StreamId::new(1, 0));
        hub.release("s", 1, Some(StreamId::new(1, 0)));
        deliver(&mut hub, &[2, 3]);
        assert!(matches!(hub.join("s", &How::plain(Source::Stream), &b).1, Joined::Live));
        assert_eq!(hub.joined_at("s", 2), Some(StreamId::new(3, 0)));
        deliver(&mut hub, &[4, 5]);
        assert!(sent_ids(&b).is_empty(), "held while b's reply and history go out");
        // History up to 4 was sent by the replay: held frames after it only.
        hub.release("s", 2, Some(StreamId::new(4, 0)));
        assert_eq!(sent_ids(&b), [5]);
        deliver(&mut hub, &[6]);
        assert_eq!(sent_ids(&b), [6]);
        assert_eq!(sent_ids(&a), [2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_since_ahead_of_the_cursor_skips_live_ids_already_sent() {
        let mut hub = Hub::default();
        let a = conn(1);
        hub.join("s", &How::plain(Source::Stream), &a);
        hub.set_live("s", StreamId::new(10, 0));
        // The replay sent history through id 12, past the core's cursor.
        hub.release("s", 1, Some(StreamId::new(12, 0)));
        deliver(&mut hub, &[11, 12, 13, 14]);
        assert_eq!(sent_ids(&a), [13, 14], "never twice, never skipped");
    }

    #[test]
    fn held_stream_frames_over_the_queue_limit_are_dropped_for_the_replay_to_read() {
        let mut hub = Hub::default();
        let limits = Limits {
            outbound_queue_bytes: 1000,
            ..Limits::default()
        };
        let a = Rc::new(Conn::new(1, -1, &limits));
        hub.join("s", &How::plain(Source::Stream), &a);
        hub.set_live("s", StreamId::ZERO);
        let entry = |ms: u64| Entry {
            id: StreamId::new(ms, 0),
            fields: vec![(Bytes::from_static(b"data"), Bytes::from(vec![b'1'; 400]))],
        };
        let mut frames = FrameBuilder::new();
        hub.deliver_stream("s", &[entry(1), entry(2)], &mut frames);
        assert_eq!(hub.take_dropped("s", 1), None, "two fit");
        let one = frames.stream_delivery("s", StreamId::new(1, 0), &entry(1).fields).len();
        assert_eq!(
            hub.held_bytes("s", 1),
            2 * (one + FRAME_OVERHEAD),
            "charged as the queue charges"
        );
        assert_eq!(hub.held_bytes("s", 2), 0, "not a subscriber");
        hub.deliver_stream("s", &[entry(3), entry(4)], &mut frames);
        assert!(
            a.is_open(),
            "a replaying client is not closed for what its core read meanwhile"
        );
        assert_eq!(hub.take_dropped("s", 1), Some(StreamId::new(3, 0)));
        assert_eq!(hub.take_dropped("s", 1), None, "taken once");
        // The replay read 1..=3 from Redis; 4 was held after the drop.
        hub.release("s", 1, Some(StreamId::new(3, 0)));
        assert_eq!(sent_ids(&a), [4]);
    }

    #[test]
    fn held_pubsub_frames_over_the_queue_limit_close_with_4008() {
        let mut hub = Hub::default();
        let limits = Limits {
            outbound_queue_bytes: 1000,
            ..Limits::default()
        };
        let a = Rc::new(Conn::new(1, -1, &limits));
        hub.join("p", &How::plain(Source::Pubsub), &a);
        hub.set_live("p", StreamId::ZERO);
        let big = vec![b'1'; 600];
        let mut frames = FrameBuilder::new();
        hub.deliver_pubsub("p", &big, &mut frames);
        assert!(a.is_open(), "600 bytes held fit");
        hub.deliver_pubsub("p", &big, &mut frames);
        assert!(!a.is_open(), "over the limit while held");
        let queued = a.take_queued();
        assert_eq!(queued.len(), 1, "only the close frame");
        assert_eq!(&frame::body(&queued[0])[..2], &4008u16.to_be_bytes());
    }

    fn keyed(policy: SlowConsumer, min_interval: Option<Duration>) -> How {
        How {
            source: Source::Stream,
            policy,
            key: Some(Rc::from("sym")),
            min_interval,
        }
    }

    fn sym_entry(ms: u64, sym: &str) -> Entry {
        Entry {
            id: StreamId::new(ms, 0),
            fields: vec![(Bytes::from_static(b"sym"), Bytes::from(sym.to_owned()))],
        }
    }

    #[test]
    fn a_conflate_subscriber_gets_the_newest_per_key_and_a_plain_one_everything() {
        let mut hub = Hub::default();
        let (plain, conflated) = (conn(1), conn(2));
        // One namespace, one key; policies differ only to compare the two.
        hub.join("s", &keyed(SlowConsumer::Disconnect, None), &plain);
        hub.join("s", &keyed(SlowConsumer::Conflate, None), &conflated);
        hub.set_live("s", StreamId::ZERO);
        hub.release("s", 1, Some(StreamId::ZERO));
        hub.release("s", 2, Some(StreamId::ZERO));
        let entries = [sym_entry(1, "a"), sym_entry(2, "b"), sym_entry(3, "a")];
        hub.deliver_stream("s", &entries, &mut FrameBuilder::new());
        assert_eq!(sent_ids(&plain), [1, 2, 3]);
        assert_eq!(
            sent_ids(&conflated),
            [2, 3],
            "a's older value was replaced while queued"
        );
    }

    #[test]
    fn frames_held_during_setup_obey_the_policy_and_rate() {
        let mut hub = Hub::default();
        let a = conn(1);
        hub.join("s", &keyed(SlowConsumer::Conflate, Some(Duration::from_secs(60))), &a);
        hub.set_live("s", StreamId::ZERO);
        let entries = [sym_entry(1, "a"), sym_entry(2, "a"), sym_entry(3, "a")];
        hub.deliver_stream("s", &entries, &mut FrameBuilder::new());
        hub.release("s", 1, Some(StreamId::ZERO));
        assert_eq!(sent_ids(&a), [1], "one now, the rest waits for the rate");
        assert!(hub.next_release().is_some(), "the newest is scheduled");
        let dropped = hub.drop_channel("s");
        assert_eq!(dropped.len(), 1);
        assert!(a.take_queued().is_empty(), "a dropped channel's lane is closed");
    }

    #[test]
    fn a_failed_setup_wakes_its_waiters_and_leaves_nothing() {
        let mut hub = Hub::default();
        let (a, b) = (conn(1), conn(2));
        hub.join("s", &How::plain(Source::Stream), &a);
        let Joined::Wait(event) = hub.join("s", &How::plain(Source::Stream), &b).1 else {
            panic!("waits");
        };
        hub.fail("s");
        assert!(event.is_set());
        assert!(!hub.is_live("s"));
        assert!(hub.stream_cursors().is_empty());
        assert!(hub.leave("s", 1).is_none(), "already gone");
    }

    #[test]
    fn the_last_subscriber_leaving_removes_the_channel() {
        let mut hub = Hub::default();
        let (a, b) = (conn(1), conn(2));
        hub.join("s", &How::plain(Source::Stream), &a);
        hub.join("s", &How::plain(Source::Stream), &b);
        hub.set_live("s", StreamId::new(3, 0));
        assert_eq!(hub.stream_cursors(), vec![(Rc::from("s"), StreamId::new(3, 0))]);
        assert!(hub.leave("s", 1).is_none());
        let gone = hub.leave("s", 2).expect("the last one leaving returns the channel");
        assert_eq!(gone.source, Source::Stream);
        assert!(hub.stream_cursors().is_empty(), "the reader no longer reads it");
    }

    #[test]
    fn subscribers_leaving_in_any_order_leave_the_others_served() {
        let mut hub = Hub::default();
        let conns: Vec<Rc<Conn>> = (1..=50).map(|serial| conn(serial * 1024)).collect();
        for c in &conns {
            hub.join("s", &How::plain(Source::Stream), c);
        }
        hub.set_live("s", StreamId::ZERO);
        for c in &conns {
            hub.release("s", c.id, Some(StreamId::ZERO));
        }
        // Every third one leaves, from the back, the front and the middle.
        let leaving = |i: usize| i.is_multiple_of(3);
        for i in [48, 0, 24, 3, 45].into_iter().chain((0..50).filter(|&i| leaving(i))) {
            assert!(hub.leave("s", conns[i].id).is_none(), "others still hold it");
        }
        deliver(&mut hub, &[7]);
        for (i, c) in conns.iter().enumerate() {
            let expected: &[u64] = if leaving(i) { &[] } else { &[7] };
            assert_eq!(sent_ids(c), expected, "subscriber {i}");
            assert_eq!(hub.joined_at("s", c.id).is_none(), leaving(i), "subscriber {i}");
        }
        let staying: Vec<usize> = (0..50).filter(|&i| !leaving(i)).collect();
        let (last, rest) = staying.split_last().unwrap();
        for &i in rest {
            assert!(hub.leave("s", conns[i].id).is_none());
        }
        assert!(
            hub.leave("s", conns[*last].id).is_some(),
            "the last one removes the channel"
        );
    }

    #[test]
    fn nothing_is_delivered_to_a_channel_still_starting() {
        let mut hub = Hub::default();
        let a = conn(1);
        hub.join("s", &How::plain(Source::Stream), &a);
        deliver(&mut hub, &[1]);
        hub.set_live("s", StreamId::ZERO);
        hub.release("s", 1, Some(StreamId::ZERO));
        assert!(sent_ids(&a).is_empty(), "read again after the cursor is set");
        hub.join("p", &How::plain(Source::Pubsub), &a);
        hub.deliver_pubsub("p", b"{}", &mut FrameBuilder::new());
        hub.set_live("p", StreamId::ZERO);
        hub.release("p", 1, None);
        assert!(a.take_queued().is_empty());
        hub.deliver_pubsub("p", b"{}", &mut FrameBuilder::new());
        assert_eq!(a.take_queued().len(), 1);
    }

    #[test]
    fn the_reader_and_the_resubscriber_see_the_right_channels() {
        let mut hub = Hub::default();
        let a = conn(1);
        hub.join("s.live", &How::plain(Source::Stream), &a);
        hub.join("s.starting", &How::plain(Source::Stream), &a);
        hub.join("p.live", &How::plain(Source::Pubsub), &a);
        hub.join("p.starting", &How::plain(Source::Pubsub), &a);
        hub.set_live("s.live", StreamId::new(9, 0));
        hub.set_live("p.live", StreamId::ZERO);
        assert!(hub.is_live("s.live") && hub.is_live("p.live"));
        assert!(!hub.is_live("s.starting") && !hub.is_live("nothing"));
        assert_eq!(hub.stream_cursors(), vec![(Rc::from("s.live"), StreamId::new(9, 0))]);
        assert_eq!(hub.channels_of(Source::Pubsub, true), vec![Rc::from("p.live")]);
        assert_eq!(hub.channels_of(Source::Pubsub, false), vec![Rc::from("p.starting")]);
        assert_eq!(hub.channels_of(Source::Stream, false), vec![Rc::from("s.starting")]);
    }

    #[test]
    fn leaving_keeps_the_others_and_dropping_returns_every_holder() {
        let mut hub = Hub::default();
        let (a, b) = (conn(1), conn(2));
        hub.join("s", &How::plain(Source::Stream), &a);
        hub.join("s", &How::plain(Source::Stream), &b);
        hub.set_live("s", StreamId::ZERO);
        hub.release("s", 1, Some(StreamId::ZERO));
        hub.release("s", 2, Some(StreamId::ZERO));
        assert!(hub.leave("s", 1).is_none());
        deliver(&mut hub, &[1]);
        assert!(sent_ids(&a).is_empty(), "a left");
        assert_eq!(sent_ids(&b), [1], "b stays");
        hub.join("s", &How::plain(Source::Stream), &a);
        let held: Vec<u64> = hub.drop_channel("s").iter().map(|c| c.id).collect();
        assert_eq!(held, [2, 1]);
        assert!(!hub.is_live("s"));
        assert!(hub.drop_channel("s").is_empty());
    }

    /// What `conn` was sent, in order: delivery ids (ms) and gaps.
    fn sent(conn: &Conn) -> Vec<String> {
        conn.take_queued()
            .iter()
            .map(|f| {
                let body: serde_json::Value = serde_json::from_slice(frame::body(f)).unwrap();
                match body["type"].as_str() {
                    Some("gap") => format!("gap after {} dropped {}", body["after"], body["dropped"]),
                    _ => body["id"].as_str().unwrap().split('-').next().unwrap().to_owned(),
                }
            })
            .collect()
    }

    #[test]
    fn a_gap_goes_out_in_order_with_the_deliveries_held_or_not() {
        let mut hub = Hub::default();
        let (live, held, past, inside, caught_up) = (conn(1), conn(2), conn(3), conn(4), conn(5));
        hub.join("s", &How::plain(Source::Stream), &live);
        hub.set_live("s", StreamId::ZERO);
        hub.release("s", 1, Some(StreamId::ZERO));
        deliver(&mut hub, &[1, 2]);
        // Joined at 2, their replays still running.
        for c in [&held, &caught_up] {
            hub.join("s", &How::plain(Source::Stream), c);
        }
        // Joined at 2 with `since` ahead of the core: history sent through 7
        // (past the hole) or through 3 (inside it).
        for (c, through) in [(&past, 7), (&inside, 3)] {
            hub.join("s", &How::plain(Source::Stream), c);
            hub.release("s", c.id, Some(StreamId::new(through, 0)));
        }
        assert_eq!(sent(&live), ["1", "2"]);
        // Stale (the cursor is 2, not 1), or no such channel: nothing.
        hub.announce_gap("s", StreamId::new(1, 0), StreamId::new(5, 0), Some(2));
        hub.announce_gap("nothing", StreamId::new(2, 0), StreamId::new(5, 0), Some(2));
        assert!(sent(&live).is_empty());
        assert_eq!(hub.held_bytes("s", 2), 0);
        // 3 and 4 were trimmed before the core read them.
        hub.announce_gap("s", StreamId::new(2, 0), StreamId::new(5, 0), Some(2));
        deliver(&mut hub, &[5, 6]);
        assert_eq!(sent(&live), ["gap after \"2-0\" dropped 2", "5", "6"]);
        assert!(hub.held_bytes("s", 2) > 0, "the gap is charged while held");
        // History through 2 (the hub's cursor when it joined): the gap stays.
        hub.release("s", 2, Some(StreamId::new(2, 0)));
        assert_eq!(sent(&held), ["gap after \"2-0\" dropped 2", "5", "6"]);
        // A replay that read past 2 from Redis saw the hole itself.
        hub.release("s", 5, Some(StreamId::new(5, 0)));
        assert_eq!(sent(&caught_up), ["6"]);
        assert!(sent(&past).is_empty(), "its history covers the hole, and 5, 6");
        assert_eq!(sent(&inside), ["gap after \"3-0\" dropped null", "5", "6"]);
    }
}
