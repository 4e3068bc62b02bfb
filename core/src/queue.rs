//! A connection's bounded outbound queue of shared frames.

use std::collections::VecDeque;

use bytes::Bytes;

/// The queue is over its byte limit: the client is not keeping up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("outbound queue over its limit of {limit} bytes")]
pub struct Overflow {
    pub limit: usize,
}

/// Frames waiting for a connection's writer, bounded in bytes.
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
        if self.bytes + frame.len() > self.limit && !self.frames.is_empty() {
            return Err(Overflow { limit: self.limit });
        }
        self.push_unbounded(frame);
        Ok(())
    }

    /// Queues a frame that must go out whatever the limit (a close frame).
    pub fn push_unbounded(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    /// Moves up to `max` frames into `out`, oldest first.
    pub fn drain_into(&mut self, out: &mut Vec<Bytes>, max: usize) {
        let n = self.frames.len().min(max);
        for frame in self.frames.drain(..n) {
            self.bytes -= frame.len();
            out.push(frame);
        }
    }

    /// The most bytes the queue holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_counts_bytes() {
        let mut q = OutQueue::new(10);
        q.push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(q.push(Bytes::from_static(b"123456")), Err(Overflow { limit: 10 }));
        q.push(Bytes::from_static(b"1234")).unwrap();
        assert_eq!(q.bytes(), 10);
        let mut out = Vec::new();
        q.drain_into(&mut out, 1);
        assert_eq!(out.len(), 1);
        assert_eq!(q.bytes(), 4);
    }

    #[test]
    fn one_frame_larger_than_the_limit_still_goes_to_an_empty_queue() {
        let mut q = OutQueue::new(4);
        q.push(Bytes::from_static(b"123456")).unwrap();
        assert!(q.push(Bytes::from_static(b"1")).is_err());
    }
}
