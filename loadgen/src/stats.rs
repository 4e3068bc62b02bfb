//! Delivery bookkeeping: latency histogram and, per connection, which sequence
//! numbers arrived (to count lost, duplicated and out-of-order deliveries).

use hdrhistogram::Histogram;

/// Per-connection record of one channel's sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    seen: Vec<u64>,
    highest: Option<u64>,
    pub received: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
}

impl SeqTracker {
    /// Records the arrival of `seq`.
    pub fn record(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicated += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.received += 1;
        match self.highest {
            Some(h) if seq < h => self.out_of_order += 1,
            _ => self.highest = Some(seq),
        }
    }

    /// Sequence numbers in `from..to` that never arrived.
    pub fn missing(&self, from: u64, to: u64) -> u64 {
        (from..to)
            .filter(|&seq| {
                let (word, bit) = ((seq / 64) as usize, seq % 64);
                self.seen.get(word).is_none_or(|w| w & (1 << bit) == 0)
            })
            .count() as u64
    }
}

/// Latencies in microseconds, 1 us to 60 s at 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_clean() {
        let mut t = SeqTracker::default();
        (0..1000).for_each(|s| t.record(s));
        assert_eq!((t.received, t.duplicated, t.out_of_order), (1000, 0, 0));
        assert_eq!(t.missing(0, 1000), 0);
    }

    #[test]
    fn counts_gaps_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3, 2, 3, 5] {
            t.record(s);
        }
        assert_eq!(t.received, 5);
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.out_of_order, 1, "2 arrived after 3");
        assert_eq!(t.missing(0, 6), 1, "4 never arrived");
        assert_eq!(t.missing(0, 8), 3, "nor 6 and 7");
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
