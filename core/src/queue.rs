//! A connection's bounded outbound queue of shared frames.

use std::collections::VecDeque;

use bytes::Bytes;

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

/// Frames waiting for a connection's writer, bounded in bytes (each frame
/// counted as its length plus [`FRAME_OVERHEAD`]).
#[derive(Debug)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    limit: usize,
}

impl OutQueue {
    /// An empty queue that holds at most `limit` bytes of frames.
    pub fn new(limit: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// Queues `frame` (a refcount bump, not a copy), or refuses it when the queue
    /// would go over its limit.
    pub fn push(&mut self, frame: Bytes) -> Result<(), Overflow> {
        if self.bytes + cost(&frame) > self.limit && !self.frames.is_empty() {
            return Err(Overflow { limit: self.limit });
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Queues a frame that must go out whatever the limit (a close frame).
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.bytes += cost(&frame);
        self.frames.push_back(frame);
    }

    /// Moves up to `max` frames into `out`, oldest first.
    pub fn drain_into(&mut self, out: &mut Vec<Bytes>, max: usize) {
        let n = self.frames.len().min(max);
        for frame in self.frames.drain(..n) {
            self.bytes -= cost(&frame);
            out.push(frame);
        }
    }

    /// The most bytes the queue holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued, overhead included.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}

/// What `frame` counts against a queue's limit: its length plus
/// [`FRAME_OVERHEAD`]. Frames held for a subscription are charged the same.
pub fn cost(frame: &Bytes) -> usize {
    frame.len() + FRAME_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_counts_bytes() {
        let mut q = OutQueue::new(10 + 2 * FRAME_OVERHEAD);
        q.push(Bytes::from_static(b"123456")).unwrap();
        assert!(q.push(Bytes::from_static(b"1234567")).is_err());
        q.push(Bytes::from_static(b"1234")).unwrap();
        assert_eq!(q.bytes(), 10 + 2 * FRAME_OVERHEAD);
        let mut out = Vec::new();
        q.drain_into(&mut out, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(q.bytes(), 4 + FRAME_OVERHEAD);
    }

    #[test]
    fn tiny_frames_are_charged_their_overhead() {
        // 2-byte pongs: a 64 KiB bound holds ~1,000 of them, not 32,768.
        let mut q = OutQueue::new(64 * 1024);
        let mut queued = 0;
        while q.push(Bytes::from_static(b"\x8a\x00")).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 64 * 1024 / (2 + FRAME_OVERHEAD));
    }

    #[test]
    fn clear_empties_and_the_limit_is_kept() {
        let mut q = OutQueue::new(1000);
        assert_eq!(q.limit(), 1000);
        assert!(q.is_empty());
        q.push(Bytes::from_static(b"abc")).unwrap();
        assert!(!q.is_empty());
        q.clear();
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.limit(), 1000);
    }

    #[test]
    fn one_frame_larger_than_the_limit_still_goes_to_an_empty_queue() {
        let mut q = OutQueue::new(4);
        q.push(Bytes::from_static(b"123456")).unwrap();
        assert!(q.push(Bytes::from_static(b"1")).is_err());
    }
}
