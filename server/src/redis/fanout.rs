//! Handing a large XREAD reply to the hub in bounded slices, letting the
//! connections' writers run between slices.
//!
//! A catch-up after an outage or a burst can bring thousands of entries in one
//! reply. Fanned out in one go, every entry's frame would sit in each
//! subscriber's outbound queue before any writer ran, and a client reading at
//! normal speed would be closed with 4008 for a reply it could easily take.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use feedgate_core::resp::Entry;
use feedgate_core::StreamId;

use crate::conn;
use crate::core::Core;

/// Most entries fanned out before the writers get a turn.
pub const SLICE_ENTRIES: usize = 128;
/// Most entry bytes (field names and values) fanned out before the writers get
/// a turn: a small share of any sane outbound queue (default 8 MiB).
pub const SLICE_BYTES: usize = 32 * 1024;

/// One stream's share of an XREAD reply.
pub struct Batch {
    pub key: Bytes,
    pub entries: Vec<Entry>,
    /// Retention removed entries between the cursor the read started after
    /// and the first of `entries`: announced just before it.
    pub gap: Option<Gap>,
}

/// Entries trimmed before the core read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The channel's cursor when it was read: the last id delivered.
    pub after: StreamId,
    /// How many, where known exactly.
    pub dropped: Option<u64>,
}

/// Fans out `batches` (an XREAD reply) slice by slice.
/// `arrived_after`: when the entries can have reached Redis at the earliest
/// (the previous read's answer), which starts their write delay.
pub async fn deliver_sliced(core: &Rc<Core>, batches: Vec<Batch>, arrived_after: Option<Instant>) {
    let mut first = true;
    for batch in &batches {
        let Some(name) = core.settings.channel_of(&batch.key) else {
            continue;
        };
        let mut gap = batch.gap;
        let mut rest = &batch.entries[..];
        while !rest.is_empty() {
            if !first {
                pass_turn().await;
            }
            first = false;
            let (slice, tail) = rest.split_at(slice_len(rest));
            // The channel may have been dropped or left between slices: the
            // hub then ignores the entries; its cursor skips repeats.
            let mut frames = core.frames.borrow_mut();
            let mut hub = core.hub.borrow_mut();
            // In the same step as the first delivery after the hole, so that
            // no subscriber joins or is released in between.
            if let Some(gap) = gap.take() {
                hub.announce_gap(name, gap.after, slice[0].id, gap.dropped);
            }
            conn::deliveries_arrived_after(arrived_after, || hub.deliver_stream(name, slice, &mut frames));
            rest = tail;
        }
    }
}

/// How many of `entries` make the next slice (at least one).
fn slice_len(entries: &[Entry]) -> usize {
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate().take(SLICE_ENTRIES) {
        bytes += entry.fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if bytes > SLICE_BYTES {
            return i.max(1);
        }
    }
    entries.len().min(SLICE_ENTRIES)
}

/// Lets every task that is ready run (the writers the last slice woke), and
/// the driver reap their completions, before this one goes on.
///
/// Not `monoio::task::yield_now`: in monoio 0.2.4 a task that wakes itself is
/// put back at the front of the run queue, so it runs again before anyone else
/// (shared/TRAPS.md). A wake from another task queues it at the back instead.
async fn pass_turn() {
    let mut queued = false;
    poll_fn(|cx| {
        if queued {
            return Poll::Ready(());
        }
        queued = true;
        let waker = cx.waker().clone();
        monoio::spawn(async move { waker.wake() });
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use feedgate_core::StreamId;

    use super::*;

    fn entries(n: usize, value: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                id: StreamId::new(1, i as u64),
                fields: vec![(Bytes::from_static(b"data"), Bytes::from(vec![b'x'; value]))],
            })
            .collect()
    }

    #[test]
    fn slices_are_bounded_by_count_and_bytes() {
        assert_eq!(slice_len(&entries(1000, 1)), SLICE_ENTRIES);
        assert_eq!(slice_len(&entries(10, 1)), 10);
        let n = slice_len(&entries(1000, 1000));
        assert!(n * 1004 <= SLICE_BYTES && n > 0, "{n}");
        // One entry larger than a slice still goes, alone.
        assert_eq!(slice_len(&entries(3, SLICE_BYTES * 2)), 1);
    }
}
