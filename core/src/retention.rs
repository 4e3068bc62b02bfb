//! Whether retention (XADD `MAXLEN`/`MINID` trimming, XTRIM) removed entries
//! after a live channel's cursor before the core read them: the gaps that
//! PROTOCOL.md section 6 has announced, never skipped silently.
//!
//! Redis 7.0 does not record what trimming removed (`max-deleted-entry-id`
//! moves on XDEL only). What it does record, in XINFO STREAM, is enough:
//!
//! - Trimming removes the oldest entries. While any entry at or before the
//!   cursor is still in the stream, nothing after the cursor was trimmed
//!   ([`witnessed`]). That is all the common case needs, when the next entry
//!   read is not already known to follow the cursor ([`follows`]); a read
//!   from just [`before`] the cursor brings that entry along.
//! - Otherwise every entry up to the cursor is gone, and the entries removed
//!   (`entries-added - length`) are those plus the hole. The reader keeps a
//!   [`Tally`] of how many entries were ever added up to its cursor, so the
//!   hole's size is the difference ([`hole_after`]).
//!
//! XDEL is not retention: an entry deleted before the core read it is not
//! announced. Where deletes after the tally's last exact count make the two
//! impossible to tell apart, a gap is announced without `dropped`.

use crate::replay::StreamInfo;
use crate::StreamId;

/// How many entries a stream was ever given up to a live channel's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// The channel cursor this tally is for (the last id delivered).
    pub cursor: StreamId,
    /// Entries ever added with an id at or before `max(cursor, exact_at)`.
    pub added: u64,
    /// The id up to which `added` was read from XINFO STREAM; counted on
    /// from there by the reader. An XDEL after it makes the count uncertain.
    pub exact_at: StreamId,
}

impl Tally {
    /// The tally of a channel going live at `cursor` (the stream's newest
    /// entry, or `0-0`), from an XINFO STREAM read atomically with it; `None`
    /// for `info` means the stream does not exist. No tally for a Redis that
    /// does not count entries (before 7.0).
    pub fn at_start(info: Option<&StreamInfo>, cursor: StreamId) -> Option<Tally> {
        let Some(info) = info else {
            return Some(Tally {
                cursor,
                added: 0,
                exact_at: cursor,
            });
        };
        counts(info)?;
        // Entries after the newest one left (deleted or trimmed away) were
        // gone before the channel went live: counted, never delivered.
        Some(Tally {
            cursor,
            added: info.entries_added,
            exact_at: info.last_generated_id.max(cursor),
        })
    }

    /// The tally once `delivered` entries up to `last` went out after the
    /// cursor of `tally`, with `hole` before them. `info` is an XINFO STREAM
    /// read atomically with those entries, if there was one.
    pub fn after(
        tally: Option<Tally>,
        info: Option<&StreamInfo>,
        hole: Hole,
        delivered: u64,
        last: StreamId,
    ) -> Option<Tally> {
        if let Some(info) = info.filter(|i| i.last_generated_id == last && counts(i).is_some()) {
            // The read reached the newest entry: its count is exact.
            return Some(Tally {
                cursor: last,
                added: info.entries_added,
                exact_at: last,
            });
        }
        let t = tally?;
        let skipped = match hole {
            Hole::None => 0,
            Hole::Gap { dropped } => dropped?,
        };
        Some(Tally {
            cursor: last,
            added: t.added.checked_add(skipped)?.checked_add(delivered)?,
            exact_at: t.exact_at,
        })
    }
}

/// `entries-added` and `length`, when this Redis reports them (7.0 and later).
fn counts(info: &StreamInfo) -> Option<(u64, u64)> {
    (info.entries_added != u64::MAX).then_some((info.entries_added, info.length))
}

/// What trimming did after a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hole {
    /// Nothing after the cursor was trimmed.
    None,
    /// Entries after the cursor were trimmed unread: `dropped` of them, where
    /// that is known exactly.
    Gap { dropped: Option<u64> },
}

/// The id right before `id`, if there is one: a read after it starts with
/// the entry `id` itself, when the stream still holds it.
pub fn before(id: StreamId) -> Option<StreamId> {
    match (id.ms, id.seq) {
        (0, 0) => None,
        (ms, 0) => Some(StreamId::new(ms - 1, u64::MAX)),
        (ms, seq) => Some(StreamId::new(ms, seq - 1)),
    }
}

/// Whether `next` is the id right after `cursor` in the same millisecond, so
/// that no entry can ever have been between them: nothing to prove.
pub fn follows(cursor: StreamId, next: StreamId) -> bool {
    next.ms == cursor.ms && cursor.seq.checked_add(1) == Some(next.seq)
}

/// Whether the stream's first entry, read at or after the read of the entries
/// after `cursor`, proves that nothing after `cursor` was trimmed: trimming
/// removes the oldest entries first, and a removed entry never comes back.
pub fn witnessed(first: Option<StreamId>, cursor: StreamId) -> bool {
    first.is_some_and(|first| first <= cursor)
}

/// What trimming removed after `cursor`, from an XINFO STREAM read
/// atomically with the entries after `cursor`, and the channel's tally.
pub fn hole_after(info: &StreamInfo, cursor: StreamId, tally: Option<&Tally>) -> Hole {
    if witnessed(info.first_entry, cursor) || info.last_generated_id <= cursor {
        return Hole::None;
    }
    // Every entry up to the cursor is gone, and some came after it.
    let Some((added, length)) = counts(info) else {
        return Hole::Gap { dropped: None };
    };
    let removed = added.saturating_sub(length);
    let Some(t) = tally.filter(|t| t.cursor == cursor) else {
        // Without a count, only a stream that never lost an entry is clear.
        return if removed == 0 {
            Hole::None
        } else {
            Hole::Gap { dropped: None }
        };
    };
    match removed.checked_sub(t.added) {
        Some(0) => Hole::None,
        // No XDEL after the exact count: every removal past it was trimming.
        Some(n) if info.max_deleted_id <= t.exact_at => Hole::Gap { dropped: Some(n) },
        Some(_) => Hole::Gap { dropped: None },
        // Fewer removed than existed up to the cursor: the stream was deleted
        // and created again, and what the old one held after the cursor is
        // unknown.
        None => Hole::Gap { dropped: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    /// A stream that was given entries `1..=added` (ids `n-0`), of which
    /// `first..=added` are left, and XDEL removed up to `max_del`.
    fn stream(added: u64, first: u64, max_del: u64) -> StreamInfo {
        let length = (added + 1).saturating_sub(first);
        StreamInfo {
            length,
            last_generated_id: id(added),
            max_deleted_id: id(max_del),
            entries_added: added,
            first_entry: (length > 0).then(|| id(first)),
        }
    }

    fn tally(cursor: u64, added: u64) -> Tally {
        Tally {
            cursor: id(cursor),
            added,
            exact_at: id(cursor),
        }
    }

    #[test]
    fn a_retained_entry_at_or_before_the_cursor_proves_no_hole() {
        assert!(witnessed(Some(id(3)), id(3)));
        assert!(witnessed(Some(id(1)), id(3)));
        assert!(!witnessed(Some(id(4)), id(3)));
        assert!(!witnessed(None, id(3)));
        assert_eq!(hole_after(&stream(100, 3, 0), id(3), None), Hole::None);
    }

    #[test]
    fn the_id_before_is_the_greatest_smaller_one() {
        assert_eq!(before(StreamId::new(5, 3)), Some(StreamId::new(5, 2)));
        assert_eq!(before(StreamId::new(5, 0)), Some(StreamId::new(4, u64::MAX)));
        assert_eq!(before(StreamId::new(0, 1)), Some(StreamId::ZERO));
        assert_eq!(before(StreamId::ZERO), None);
    }

    #[test]
    fn only_the_next_id_of_the_same_millisecond_follows_at_once() {
        assert!(follows(StreamId::new(5, 3), StreamId::new(5, 4)));
        assert!(follows(StreamId::ZERO, StreamId::new(0, 1)));
        assert!(!follows(StreamId::new(5, 3), StreamId::new(5, 5)));
        assert!(!follows(StreamId::new(5, 3), StreamId::new(6, 0)), "5-4 may have been");
        assert!(!follows(StreamId::new(5, u64::MAX), StreamId::new(6, 0)));
    }

    #[test]
    fn trimming_past_the_cursor_counts_the_hole_exactly() {
        // Read through 10; 1..=95 trimmed since: 11..=95 were never read.
        let info = stream(100, 96, 0);
        assert_eq!(
            hole_after(&info, id(10), Some(&tally(10, 10))),
            Hole::Gap { dropped: Some(85) }
        );
        // MAXLEN 1: the entry read next replaced the cursor's, nothing lost.
        let info = stream(11, 11, 0);
        assert_eq!(hole_after(&info, id(10), Some(&tally(10, 10))), Hole::None);
    }

    #[test]
    fn nothing_added_after_the_cursor_is_no_hole() {
        assert_eq!(hole_after(&stream(10, 11, 0), id(10), Some(&tally(10, 10))), Hole::None);
    }

    #[test]
    fn xdel_after_the_exact_count_leaves_the_size_unknown() {
        let mut info = stream(100, 96, 0);
        info.max_deleted_id = id(50);
        assert_eq!(
            hole_after(&info, id(10), Some(&tally(10, 10))),
            Hole::Gap { dropped: None }
        );
        // Deletes at or before the exact count change nothing.
        info.max_deleted_id = id(10);
        assert_eq!(
            hole_after(&info, id(10), Some(&tally(10, 10))),
            Hole::Gap { dropped: Some(85) }
        );
    }

    #[test]
    fn without_a_usable_tally_a_hole_is_announced_without_a_size() {
        let info = stream(100, 96, 0);
        assert_eq!(hole_after(&info, id(10), None), Hole::Gap { dropped: None });
        assert_eq!(
            hole_after(&info, id(10), Some(&tally(9, 9))),
            Hole::Gap { dropped: None },
            "a tally for another cursor says nothing"
        );
        // A stream that never lost an entry cannot have a hole.
        let untouched = StreamInfo {
            length: 5,
            last_generated_id: id(25),
            max_deleted_id: StreamId::ZERO,
            entries_added: 5,
            first_entry: Some(id(21)),
        };
        assert_eq!(hole_after(&untouched, id(10), None), Hole::None);
        // Before Redis 7.0 nothing is counted.
        let old = StreamInfo {
            entries_added: u64::MAX,
            ..info
        };
        assert_eq!(
            hole_after(&old, id(10), Some(&tally(10, 10))),
            Hole::Gap { dropped: None }
        );
    }

    #[test]
    fn a_stream_created_again_is_a_hole_of_unknown_size() {
        // 10 entries read, then DEL and 3 new ones: fewer removed than read.
        let again = StreamInfo {
            length: 3,
            last_generated_id: id(23),
            max_deleted_id: StreamId::ZERO,
            entries_added: 3,
            first_entry: Some(id(21)),
        };
        assert_eq!(
            hole_after(&again, id(10), Some(&tally(10, 10))),
            Hole::Gap { dropped: None }
        );
    }

    #[test]
    fn the_tally_starts_from_xinfo_and_counts_on() {
        // Entries 1..=8 added, 7 and 8 deleted: the newest left is 6.
        let mut info = stream(8, 1, 8);
        info.length = 6;
        let start = Tally::at_start(Some(&info), id(6)).unwrap();
        assert_eq!(
            start,
            Tally {
                cursor: id(6),
                added: 8,
                exact_at: id(8)
            }
        );
        // Later 9..=20 added, 1..=15 trimmed: 9..=15 never read.
        let later = StreamInfo {
            length: 5,
            last_generated_id: id(20),
            max_deleted_id: id(8),
            entries_added: 20,
            first_entry: Some(id(16)),
        };
        let hole = hole_after(&later, id(6), Some(&start));
        assert_eq!(hole, Hole::Gap { dropped: Some(7) });
        // A read of 16..=18 only (COUNT): counted on from the tally.
        let partial = Tally::after(Some(start), Some(&later), hole, 3, id(18)).unwrap();
        assert_eq!(
            partial,
            Tally {
                cursor: id(18),
                added: 18,
                exact_at: id(8)
            }
        );
        // A read that reaches the newest entry takes the exact count.
        let full = Tally::after(Some(partial), Some(&later), Hole::None, 2, id(20)).unwrap();
        assert_eq!(
            full,
            Tally {
                cursor: id(20),
                added: 20,
                exact_at: id(20)
            }
        );
        // A proven read with no XINFO counts on.
        assert_eq!(Tally::after(Some(full), None, Hole::None, 4, id(24)).unwrap().added, 24);
        // A hole of unknown size loses the count.
        assert_eq!(
            Tally::after(Some(full), None, Hole::Gap { dropped: None }, 4, id(30)),
            None
        );
    }

    #[test]
    fn a_missing_stream_starts_at_zero_and_an_old_redis_has_no_tally() {
        assert_eq!(
            Tally::at_start(None, StreamId::ZERO),
            Some(Tally {
                cursor: StreamId::ZERO,
                added: 0,
                exact_at: StreamId::ZERO
            })
        );
        let old = StreamInfo {
            entries_added: u64::MAX,
            ..stream(5, 1, 0)
        };
        assert_eq!(Tally::at_start(Some(&old), id(5)), None);
    }
}
