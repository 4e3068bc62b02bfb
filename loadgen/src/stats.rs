//! Delivery bookkeeping: latency histogram and, per connection, which sequence
//! numbers arrived, which holes a `gap` announced, and what a step's
//! deliveries come to under the delivery rule the subscription was promised
//! ([`Acceptance`]).

use hdrhistogram::Histogram;

use crate::delivery::{key_of, StreamPos};
use crate::publisher::Kind;

/// A slow-consumer policy of PROTOCOL.md section 6. The server applies it per
/// namespace; the load generator only names it, picks channels under the
/// prefix `lg.<policy>.` for it, and counts deliveries by its promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// A client that falls behind is closed with 4008.
    Disconnect,
    /// A client that falls behind loses its oldest queued messages, announced by `gap`.
    #[value(name = "drop_oldest")]
    DropOldest,
    /// A client that falls behind gets the newest message per key (or channel).
    Conflate,
}

impl Policy {
    /// The name used in configuration and channel prefixes.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Disconnect => "disconnect",
            Policy::DropOldest => "drop_oldest",
            Policy::Conflate => "conflate",
        }
    }
}

/// Counters of one connection's deliveries. They only grow; a step reports
/// the difference between two snapshots ([`Counts::since`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Distinct sequence numbers received.
    pub received: u64,
    /// Sequence numbers received again.
    pub duplicated: u64,
    /// Received after a higher sequence number of the same channel.
    pub out_of_order: u64,
    /// Received after a higher sequence number of the same key: older than a
    /// value the client already had (never acceptable, conflated or not).
    pub stale: u64,
    /// Deliveries whose intended send time fell in the measured window
    /// (counted by the receiver, which knows the window).
    pub in_window: u64,
    /// `gap` announcements received.
    pub gaps: u64,
    /// Sum of the announcements' `dropped`.
    pub gap_dropped: u64,
    /// Announcements without a `dropped` count.
    pub gaps_uncounted: u64,
    /// Sequence numbers skipped in holes that a `gap` announced.
    pub announced_skipped: u64,
    /// Holes in the sequence that nothing announced.
    pub silent_holes: u64,
    /// Sequence numbers skipped in those holes.
    pub silent_skipped: u64,
    /// Announcements that disagree with what followed: `after` is not the last
    /// delivered id, `dropped` is not the size of the hole, or no hole followed.
    pub gap_mismatches: u64,
}

impl Counts {
    /// What was counted since `before` (a snapshot of the same counters).
    pub fn since(&self, before: &Counts) -> Counts {
        Counts {
            received: self.received.saturating_sub(before.received),
            duplicated: self.duplicated.saturating_sub(before.duplicated),
            out_of_order: self.out_of_order.saturating_sub(before.out_of_order),
            stale: self.stale.saturating_sub(before.stale),
            in_window: self.in_window.saturating_sub(before.in_window),
            gaps: self.gaps.saturating_sub(before.gaps),
            gap_dropped: self.gap_dropped.saturating_sub(before.gap_dropped),
            gaps_uncounted: self.gaps_uncounted.saturating_sub(before.gaps_uncounted),
            announced_skipped: self.announced_skipped.saturating_sub(before.announced_skipped),
            silent_holes: self.silent_holes.saturating_sub(before.silent_holes),
            silent_skipped: self.silent_skipped.saturating_sub(before.silent_skipped),
            gap_mismatches: self.gap_mismatches.saturating_sub(before.gap_mismatches),
        }
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counts) {
        self.received += other.received;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.stale += other.stale;
        self.in_window += other.in_window;
        self.gaps += other.gaps;
        self.gap_dropped += other.gap_dropped;
        self.gaps_uncounted += other.gaps_uncounted;
        self.announced_skipped += other.announced_skipped;
        self.silent_holes += other.silent_holes;
        self.silent_skipped += other.silent_skipped;
        self.gap_mismatches += other.gap_mismatches;
    }
}

/// A `gap` received and not yet matched by the delivery after its hole.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Entries announced as skipped; `None` when any announcement had no count.
    dropped: Option<u64>,
}

/// Per-connection record of one channel's sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    seen: Vec<u64>,
    /// One past the highest sequence number received (0: none yet); the
    /// publisher numbers each channel from 0.
    next: u64,
    /// The stream id of the highest sequence number received.
    last_id: Option<StreamPos>,
    /// Instruments the publisher cycles over (0 counts as 1).
    keys: u64,
    /// Per key: one past the highest sequence number received (0: none).
    key_next: Vec<u64>,
    pending: Option<Pending>,
    /// What arrived so far.
    pub counts: Counts,
}

impl SeqTracker {
    /// A tracker for a channel whose messages cycle over `keys` instruments.
    pub fn new(keys: u64) -> Self {
        Self {
            keys,
            ..Self::default()
        }
    }

    /// Whether `seq` has arrived.
    pub fn seen(&self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        self.seen.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Records the arrival of `seq`, delivered with stream id `id`.
    pub fn record(&mut self, seq: u64, id: Option<StreamPos>) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.counts.duplicated += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.counts.received += 1;

        let key = key_of(seq, self.keys) as usize;
        if self.key_next.len() <= key {
            self.key_next.resize(key + 1, 0);
        }
        if seq < self.key_next[key] {
            self.counts.stale += 1;
        } else {
            self.key_next[key] = seq + 1;
        }

        if seq < self.next {
            self.counts.out_of_order += 1;
            return;
        }
        let skipped = seq - self.next;
        match self.pending.take() {
            Some(gap) => {
                self.counts.announced_skipped += skipped;
                if skipped == 0 || gap.dropped.is_some_and(|n| n != skipped) {
                    self.counts.gap_mismatches += 1;
                }
            }
            None if skipped > 0 => {
                self.counts.silent_holes += 1;
                self.counts.silent_skipped += skipped;
            }
            None => {}
        }
        self.next = seq + 1;
        self.last_id = id;
    }

    /// Records a `gap` announcement: the next delivery comes after a hole of
    /// `dropped` entries that follows the entry with id `after`.
    pub fn gap(&mut self, after: Option<StreamPos>, dropped: Option<u64>) {
        self.counts.gaps += 1;
        match dropped {
            Some(n) => self.counts.gap_dropped += n,
            None => self.counts.gaps_uncounted += 1,
        }
        // Before any delivery `after` is the subscription's position, which
        // the tracker does not know; after one it must be that delivery's id.
        if let (Some(last), Some(after)) = (self.last_id, after) {
            if last != after {
                self.counts.gap_mismatches += 1;
            }
        }
        // Two announcements with no delivery between them describe one hole.
        let dropped = match self.pending {
            Some(p) => p.dropped.zip(dropped).map(|(a, b)| a + b),
            None => dropped,
        };
        self.pending = Some(Pending { dropped });
    }

    /// Sequence numbers in `from..to` that never arrived.
    pub fn missing(&self, from: u64, to: u64) -> u64 {
        (from..to).filter(|&seq| !self.seen(seq)).count() as u64
    }

    /// Keys whose newest sequence number in `from..to` never arrived.
    pub fn keys_without_newest(&self, from: u64, to: u64) -> u64 {
        let keys = self.keys.max(1);
        (0..keys)
            .filter_map(|k| newest_of_key(from, to, k, keys))
            .filter(|&seq| !self.seen(seq))
            .count() as u64
    }
}

/// The highest sequence number in `from..to` whose key is `key` of `keys`.
pub fn newest_of_key(from: u64, to: u64, key: u64, keys: u64) -> Option<u64> {
    let keys = keys.max(1);
    let last = to.checked_sub(1).filter(|&l| l >= from)?;
    let back = (key_of(last, keys) + keys - key % keys) % keys;
    last.checked_sub(back).filter(|&s| s >= from)
}

/// What a subscription was promised, and so which missing deliveries count as
/// lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Acceptance {
    /// Every message, once, in order: the `disconnect` policy (or none named).
    Exact,
    /// Every message, once, in order, except in holes a `gap` announced:
    /// `drop_oldest` on a stream channel.
    Announced,
    /// A conflated subset: in order, never a duplicate, never older than a
    /// value already seen for the same key, and the channel's newest message
    /// arrives. `conflate`, any `max_rate`, and `drop_oldest` on pub/sub
    /// (which has no ids to announce a gap with).
    Subset,
}

/// One connection's step under an [`Acceptance`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Missing deliveries the rule does not allow.
    pub lost: u64,
    /// Missing deliveries the rule allows (announced, or conflated away).
    pub skipped: u64,
    /// Keys whose newest message in the step never arrived. Zero under a
    /// server that conflates by key; under conflation by channel only the
    /// channel's newest is promised, so this may be above zero.
    pub keys_without_newest: u64,
}

impl Acceptance {
    /// What a subscription of `kind`, under `policy`, with `max_rate` if any, is promised.
    pub fn of(kind: Kind, policy: Option<Policy>, max_rate: Option<f64>) -> Self {
        match (policy, max_rate) {
            (_, Some(_)) | (Some(Policy::Conflate), None) => Acceptance::Subset,
            (Some(Policy::DropOldest), None) if kind == Kind::Stream => Acceptance::Announced,
            (Some(Policy::DropOldest), None) => Acceptance::Subset,
            (Some(Policy::Disconnect) | None, None) => Acceptance::Exact,
        }
    }

    /// The rule's name, as in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Acceptance::Exact => "exact",
            Acceptance::Announced => "announced",
            Acceptance::Subset => "subset",
        }
    }

    /// Settles messages `from..to` of `t`'s channel; `before` is `t`'s
    /// counters when the step began.
    pub fn account(self, t: &SeqTracker, before: &Counts, from: u64, to: u64) -> Account {
        let missing = t.missing(from, to);
        let lost = match self {
            Acceptance::Exact => missing,
            Acceptance::Announced => missing.saturating_sub(t.counts.since(before).announced_skipped),
            Acceptance::Subset => u64::from(to > from && !t.seen(to - 1)),
        };
        Account {
            lost,
            skipped: missing - lost,
            keys_without_newest: t.keys_without_newest(from, to),
        }
    }

    /// Whether `t` has everything of `from..to` it can still expect: all of
    /// it, or (when holes are allowed) the newest, after which nothing older
    /// is due.
    pub fn settled(self, t: &SeqTracker, before: &Counts, from: u64, to: u64) -> bool {
        let got = t.counts.since(before).received;
        match self {
            Acceptance::Exact => got >= to - from,
            Acceptance::Announced | Acceptance::Subset => got >= to - from || t.seen(to - 1),
        }
    }
}

/// Latencies in microseconds, 1 us to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut SeqTracker, seqs: &[u64]) {
        for &s in seqs {
            t.record(s, Some((100, s)));
        }
    }

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = SeqTracker::default();
        (0..1000).for_each(|s| t.record(s, None));
        let c = t.counts;
        assert_eq!((c.received, c.duplicated, c.out_of_order, c.stale), (1000, 0, 0, 0));
        assert_eq!((c.silent_holes, c.gaps, c.gap_mismatches), (0, 0, 0));
        assert_eq!(t.missing(0, 1000), 0);
        let before = Counts::default();
        assert_eq!(Acceptance::Exact.account(&t, &before, 0, 1000), Account::default());
        assert!(Acceptance::Exact.settled(&t, &before, 0, 1000));
    }

    #[test]
    fn counts_gaps_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        feed(&mut t, &[0, 1, 3, 2, 3, 5]);
        assert_eq!(t.counts.received, 5);
        assert_eq!(t.counts.duplicated, 1);
        assert_eq!(t.counts.out_of_order, 1, "2 arrived after 3");
        assert_eq!(t.missing(0, 6), 1, "4 never arrived");
        assert_eq!(t.missing(0, 8), 3, "nor 6 and 7");
        assert_eq!(
            (t.counts.silent_holes, t.counts.silent_skipped),
            (2, 2),
            "2 was a hole when 3 came (it came late), 4 one when 5 came"
        );
    }

    #[test]
    fn a_conflated_subset_in_order_is_accepted() {
        // 4 keys; the server kept, per key, only the newest while behind.
        let mut t = SeqTracker::new(4);
        feed(&mut t, &[0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15]);
        let c = t.counts;
        assert_eq!((c.duplicated, c.out_of_order, c.stale), (0, 0, 0));
        let before = Counts::default();
        let a = Acceptance::Subset.account(&t, &before, 0, 16);
        assert_eq!(
            a,
            Account {
                lost: 0,
                skipped: 5,
                keys_without_newest: 0
            }
        );
        assert!(Acceptance::Subset.settled(&t, &before, 0, 16));
        // The same arrivals under the exact rule are five losses.
        assert_eq!(Acceptance::Exact.account(&t, &before, 0, 16).lost, 5);
        assert!(!Acceptance::Exact.settled(&t, &before, 0, 16));
    }

    #[test]
    fn a_subset_must_end_with_the_newest_message() {
        let mut t = SeqTracker::new(2);
        feed(&mut t, &[0, 1, 4]);
        let a = Acceptance::Subset.account(&t, &Counts::default(), 0, 6);
        assert_eq!(a.lost, 1, "5 (the channel's newest) never came");
        assert_eq!(a.skipped, 2, "2 and 3 were conflated, 5 is not");
        assert_eq!(a.keys_without_newest, 1, "key 0's newest (4) came, key 1's (5) did not");
        assert!(!Acceptance::Subset.settled(&t, &Counts::default(), 0, 6));
    }

    #[test]
    fn channel_conflation_may_leave_a_key_behind_but_not_the_channel() {
        // Conflated by channel, not by key: only 0 and the newest (5) came.
        let mut t = SeqTracker::new(3);
        feed(&mut t, &[0, 5]);
        let a = Acceptance::Subset.account(&t, &Counts::default(), 0, 6);
        assert_eq!(
            a,
            Account {
                lost: 0,
                skipped: 4,
                keys_without_newest: 2
            }
        );
    }

    #[test]
    fn older_than_a_keys_newest_is_stale_even_in_a_subset() {
        let mut t = SeqTracker::new(2);
        // 4 (key 0) then 2 (key 0, older): stale and out of order. 3 (key 1)
        // after 4 is out of order but not stale: key 1 had only 1.
        feed(&mut t, &[0, 1, 4, 2, 3]);
        assert_eq!((t.counts.stale, t.counts.out_of_order), (1, 2));
        feed(&mut t, &[4]);
        assert_eq!(t.counts.duplicated, 1);
        assert_eq!(t.counts.stale, 1, "a duplicate is counted as such, not as stale");
    }

    #[test]
    fn announced_holes_are_skipped_and_silent_ones_lost() {
        let mut t = SeqTracker::default();
        feed(&mut t, &[0, 1]);
        t.gap(Some((100, 1)), Some(3));
        feed(&mut t, &[5, 6]); // 2, 3, 4 announced
        feed(&mut t, &[8, 9]); // 7 silent
        let c = t.counts;
        assert_eq!((c.gaps, c.gap_dropped, c.announced_skipped), (1, 3, 3));
        assert_eq!((c.silent_holes, c.silent_skipped, c.gap_mismatches), (1, 1, 0));
        let a = Acceptance::Announced.account(&t, &Counts::default(), 0, 10);
        assert_eq!((a.lost, a.skipped), (1, 3));
        assert_eq!(Acceptance::Exact.account(&t, &Counts::default(), 0, 10).lost, 4);
    }

    #[test]
    fn gaps_that_disagree_with_the_hole_are_mismatches() {
        // Wrong count.
        let mut t = SeqTracker::default();
        feed(&mut t, &[0]);
        t.gap(Some((100, 0)), Some(5));
        feed(&mut t, &[3]);
        assert_eq!((t.counts.announced_skipped, t.counts.gap_mismatches), (2, 1));
        // Wrong `after`.
        let mut t = SeqTracker::default();
        feed(&mut t, &[0, 1]);
        t.gap(Some((100, 0)), Some(1));
        feed(&mut t, &[3]);
        assert_eq!(t.counts.gap_mismatches, 1);
        // No hole after it.
        let mut t = SeqTracker::default();
        feed(&mut t, &[0]);
        t.gap(Some((100, 0)), Some(1));
        feed(&mut t, &[1]);
        assert_eq!((t.counts.announced_skipped, t.counts.gap_mismatches), (0, 1));
    }

    #[test]
    fn consecutive_gaps_describe_one_hole_and_counts_may_be_absent() {
        let mut t = SeqTracker::default();
        t.gap(Some((0, 0)), Some(2)); // before any delivery: `after` is the position
        t.gap(Some((0, 0)), Some(1));
        feed(&mut t, &[3]);
        let c = t.counts;
        assert_eq!(
            (c.gaps, c.gap_dropped, c.announced_skipped, c.gap_mismatches),
            (2, 3, 3, 0)
        );
        t.gap(Some((100, 3)), None);
        feed(&mut t, &[10]);
        let c = t.counts;
        assert_eq!((c.gaps_uncounted, c.announced_skipped, c.gap_mismatches), (1, 9, 0));
    }

    #[test]
    fn step_accounting_uses_only_the_steps_own_counts() {
        let mut t = SeqTracker::default();
        feed(&mut t, &[0]);
        t.gap(Some((100, 0)), Some(2));
        feed(&mut t, &[3, 4]);
        let before = t.counts;
        feed(&mut t, &[5, 7]); // step 5..8: 6 silent
        let d = t.counts.since(&before);
        assert_eq!((d.received, d.announced_skipped, d.silent_skipped), (2, 0, 1));
        let a = Acceptance::Announced.account(&t, &before, 5, 8);
        assert_eq!(
            (a.lost, a.skipped),
            (1, 0),
            "the earlier announced hole is not this step's"
        );
        assert!(Acceptance::Announced.settled(&t, &before, 5, 8), "the newest came");
        let mut total = Counts::default();
        total.add(&d);
        total.add(&d);
        assert_eq!(total.received, 4);
    }

    #[test]
    fn newest_of_each_key() {
        // 3 keys, messages 0..8: key 0 -> 6, key 1 -> 7, key 2 -> 5.
        let newest: Vec<_> = (0..3).map(|k| newest_of_key(0, 8, k, 3)).collect();
        assert_eq!(newest, [Some(6), Some(7), Some(5)]);
        // A window too short to hold every key.
        assert_eq!(newest_of_key(4, 6, 0, 3), None, "4 is key 1, 5 key 2");
        assert_eq!(newest_of_key(4, 6, 2, 3), Some(5));
        assert_eq!(newest_of_key(5, 5, 0, 3), None, "empty window");
        assert_eq!(newest_of_key(0, 3, 0, 1), Some(2), "one key");
        for (from, to, keys) in [(0u64, 50u64, 7u64), (13, 14, 4), (3, 40, 1), (0, 1, 5)] {
            for k in 0..keys {
                let brute = (from..to).rev().find(|&s| key_of(s, keys) == k);
                assert_eq!(newest_of_key(from, to, k, keys), brute, "{from}..{to} key {k}/{keys}");
            }
        }
    }

    #[test]
    fn each_policy_has_its_rule() {
        use Acceptance::*;
        let cases = [
            (Kind::Stream, None, None, Exact),
            (Kind::Stream, Some(Policy::Disconnect), None, Exact),
            (Kind::Stream, Some(Policy::DropOldest), None, Announced),
            (Kind::Pubsub, Some(Policy::DropOldest), None, Subset),
            (Kind::Stream, Some(Policy::Conflate), None, Subset),
            (Kind::Stream, Some(Policy::Disconnect), Some(5.0), Subset),
            (Kind::Pubsub, None, Some(5.0), Subset),
        ];
        for (kind, policy, rate, want) in cases {
            assert_eq!(Acceptance::of(kind, policy, rate), want, "{kind:?} {policy:?} {rate:?}");
        }
        assert_eq!(Policy::DropOldest.as_str(), "drop_oldest");
        assert_eq!(serde_json::to_value(Subset).unwrap(), Subset.as_str());
    }

    #[test]
    fn histogram_keeps_percentiles() {
        let mut h = latency_histogram();
        for us in 1..=1000 {
            h.record(us).unwrap();
        }
        assert_eq!(h.len(), 1000);
        let p99 = h.value_at_quantile(0.99);
        assert!((985..=995).contains(&p99), "{p99}");
        assert_eq!(h.max(), 1000);
    }
}
