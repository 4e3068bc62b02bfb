//! Redis stream ids (`<ms>-<seq>`), ordered as Redis orders them.

use std::fmt;
use std::str::FromStr;

/// A complete Redis stream id. Ordering is numeric on `(ms, seq)`, as in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

/// The text was not a complete stream id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream id (expected <ms>-<seq>, both unsigned integers)")]
pub struct BadStreamId;

impl StreamId {
    /// `0-0`: before every entry; an empty stream's position.
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    /// Builds an id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Parses `<ms>-<seq>` from bytes, as Redis sends them.
    pub fn parse(bytes: &[u8]) -> Result<Self, BadStreamId> {
        let dash = bytes.iter().position(|&b| b == b'-').ok_or(BadStreamId)?;
        let ms = parse_u64(&bytes[..dash])?;
        let seq = parse_u64(&bytes[dash + 1..])?;
        Ok(Self { ms, seq })
    }

    /// Writes the id's text form into `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut buf = itoa::Buffer::new();
        out.extend_from_slice(buf.format(self.ms).as_bytes());
        out.push(b'-');
        out.extend_from_slice(buf.format(self.seq).as_bytes());
    }
}

fn parse_u64(digits: &[u8]) -> Result<u64, BadStreamId> {
    // u64's parser takes a leading `+`; a stream id does not.
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(BadStreamId);
    }
    // Valid ASCII digits, so from_utf8 cannot fail; parse refuses an empty
    // string and overflow.
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(BadStreamId)
}

impl FromStr for StreamId {
    type Err = BadStreamId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s.as_bytes())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_orders_numerically() {
        let a: StreamId = "9-5".parse().unwrap();
        let b: StreamId = "10-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a, StreamId::new(9, 5));
    }

    #[test]
    fn rejects_incomplete_and_junk() {
        for bad in [
            "",
            "5",
            "5-",
            "-5",
            "a-1",
            "1-b",
            "1-2-3",
            "+",
            "-",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad} should be refused");
        }
    }

    proptest! {
        #[test]
        fn text_round_trips(ms in any::<u64>(), seq in any::<u64>()) {
            let id = StreamId::new(ms, seq);
            let mut out = Vec::new();
            id.write_to(&mut out);
            prop_assert_eq!(StreamId::parse(&out).unwrap(), id);
            prop_assert_eq!(String::from_utf8(out).unwrap(), id.to_string());
        }
    }
}
