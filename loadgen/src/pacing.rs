//! Open-loop pacing: message `k` is due at `start + k / rate`, whatever
//! happened to earlier messages, so a stall shows up as latency instead of
//! silently lowering the offered load (coordinated omission).

use std::time::Duration;

/// The schedule of an open-loop publisher.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Messages per second, over all channels.
    pub rate: f64,
}

impl Schedule {
    /// When message `k` is due, counted from the start.
    pub fn due(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many messages are due by `elapsed` (messages `0..n`).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        // The epsilon absorbs `due`'s rounding to whole nanoseconds.
        (elapsed.as_secs_f64() * self.rate + 1e-6).floor() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_evenly_spaced() {
        let s = Schedule { rate: 1000.0 };
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1000), Duration::from_secs(1));
        assert_eq!(s.due(1), Duration::from_millis(1));
    }

    #[test]
    fn a_late_publisher_owes_every_message_it_missed() {
        let s = Schedule { rate: 1000.0 };
        // At t=0 message 0 is due; after a 50 ms stall, messages 0..=50 are.
        assert_eq!(s.due_by(Duration::ZERO), 1);
        assert_eq!(s.due_by(Duration::from_millis(50)), 51);
        assert_eq!(s.due_by(Duration::from_micros(999)), 1);
    }

    #[test]
    fn due_and_due_by_agree() {
        let s = Schedule { rate: 37.0 };
        for k in 0..500 {
            assert!(s.due_by(s.due(k)) > k, "message {k} is due at its own due time");
        }
    }
}
