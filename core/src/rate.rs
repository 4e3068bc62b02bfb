//! A connection's op rate limit (PROTOCOL.md section 3, `rate_limited`): a
//! token bucket of `burst` ops refilled at `per_sec`, and a second bucket of
//! the same size for refusals, so a client that keeps flooding after being
//! told is closed (1008) instead of costing the server a reply per op forever.

use std::time::Instant;

/// What to do with one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allowed,
    /// Answer `rate_limited` and skip it.
    Refused,
    /// The client went on flooding past its refusals: close with 1008.
    Exceeded,
}

/// Token buckets for one connection's ops.
#[derive(Debug, Clone)]
pub struct OpRate {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    refusals_left: f64,
    last: Instant,
}

impl OpRate {
    /// `burst` ops at once, refilled at `per_sec`; full at `now`.
    pub fn new(per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_sec: f64::from(per_sec.max(1)),
            burst,
            tokens: burst,
            refusals_left: burst,
            last: now,
        }
    }

    /// Decides one op arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let refill = elapsed * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.refusals_left = (self.refusals_left + refill).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        if self.refusals_left >= 1.0 {
            self.refusals_left -= 1.0;
            return Verdict::Refused;
        }
        Verdict::Exceeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_passes_then_ops_are_refused_then_the_client_is_closed() {
        let t0 = Instant::now();
        let mut rate = OpRate::new(10, 20, t0);
        for _ in 0..20 {
            assert_eq!(rate.check(t0), Verdict::Allowed);
        }
        for _ in 0..20 {
            assert_eq!(rate.check(t0), Verdict::Refused);
        }
        assert_eq!(rate.check(t0), Verdict::Exceeded);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let t0 = Instant::now();
        let mut rate = OpRate::new(10, 20, t0);
        for _ in 0..25 {
            rate.check(t0);
        }
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(rate.check(t1), Verdict::Allowed);
        }
        assert_eq!(rate.check(t1), Verdict::Refused);
    }

    #[test]
    fn refusals_come_back_at_the_rate_too() {
        let t0 = Instant::now();
        let mut rate = OpRate::new(10, 20, t0);
        for _ in 0..40 {
            rate.check(t0);
        }
        assert_eq!(rate.check(t0), Verdict::Exceeded);
        // After a second: 10 tokens, then 10 refusals, then closed.
        let t1 = t0 + Duration::from_secs(1);
        let verdicts: Vec<Verdict> = (0..21).map(|_| rate.check(t1)).collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Allowed).count(), 10);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Refused).count(), 10);
        assert_eq!(verdicts[20], Verdict::Exceeded);
    }

    #[test]
    fn a_client_at_the_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut rate = OpRate::new(100, 1, t0);
        for i in 1..1000 {
            assert_eq!(rate.check(t0 + Duration::from_millis(10 * i)), Verdict::Allowed);
        }
    }
}
