//! Whether a replay can promise that nothing was dropped (`recovered`).
//!
//! Redis does not record what trimming removed, so the answer is derived from
//! what XINFO STREAM does record; where it cannot prove `true`, it is `false`.

use crate::StreamId;

/// What XINFO STREAM says of a stream (Redis 7.0 and later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamInfo {
    pub length: u64,
    pub last_generated_id: StreamId,
    /// Highest id removed by XDEL (XTRIM does not move it).
    pub max_deleted_id: StreamId,
    pub entries_added: u64,
    pub first_entry: Option<StreamId>,
}

//= PROTOCOL.md section 3
//# When the server cannot prove that nothing after `since` was dropped (Redis does
//# not record what trimming removed), it answers `false`: `recovered: true` must
//# never be a lie.
/// Whether every entry ever added with an id after `after` is still retained.
pub fn nothing_dropped_after(info: &StreamInfo, after: StreamId) -> bool {
    if after >= info.last_generated_id {
        return true; // nothing was ever added after it
    }
    if info.max_deleted_id > after {
        return false; // XDEL removed an entry after it
    }
    if info.entries_added == info.length {
        return true; // nothing was ever removed
    }
    // Trimming removes the oldest entries, so every trimmed id is below the first
    // retained one; if that is at or before `after`, nothing after it was trimmed.
    matches!(info.first_entry, Some(first) if first <= after)
}

/// Whether trimming (not XDEL) removed anything after `after`: the check for
/// later replay pages, once the first page has answered `recovered`.
pub fn nothing_trimmed_after(info: &StreamInfo, after: StreamId) -> bool {
    after >= info.last_generated_id
        || info.entries_added == info.length
        || matches!(info.first_entry, Some(first) if first <= after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(length: u64, added: u64, first: Option<u64>, last: u64, max_del: u64) -> StreamInfo {
        StreamInfo {
            length,
            last_generated_id: StreamId::new(last, 0),
            max_deleted_id: StreamId::new(max_del, 0),
            entries_added: added,
            first_entry: first.map(|ms| StreamId::new(ms, 0)),
        }
    }

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    #[test]
    fn untouched_stream_recovers_from_anywhere() {
        assert!(nothing_dropped_after(&info(5, 5, Some(1), 5, 0), StreamId::ZERO));
    }

    #[test]
    fn trimmed_stream_recovers_only_from_retained_ids() {
        let trimmed = info(2, 5, Some(4), 5, 0); // entries 1..=3 trimmed
        assert!(!nothing_dropped_after(&trimmed, id(2)));
        assert!(
            !nothing_dropped_after(&trimmed, id(3)),
            "3 may have a successor we cannot see"
        );
        assert!(nothing_dropped_after(&trimmed, id(4)));
        assert!(nothing_dropped_after(&trimmed, id(5)));
    }

    #[test]
    fn xdel_after_since_is_a_loss() {
        assert!(!nothing_dropped_after(&info(4, 5, Some(1), 5, 3), id(2)));
        assert!(nothing_dropped_after(&info(4, 5, Some(1), 5, 3), id(3)));
    }

    #[test]
    fn xdel_is_not_trimming() {
        let deleted = info(4, 5, Some(1), 5, 3);
        assert!(nothing_trimmed_after(&deleted, id(2)));
        let trimmed = info(2, 5, Some(4), 5, 0);
        assert!(!nothing_trimmed_after(&trimmed, id(2)));
        assert!(nothing_trimmed_after(&trimmed, id(4)));
    }

    #[test]
    fn emptied_stream_recovers_only_past_its_last_id() {
        let empty = info(0, 3, None, 3, 0);
        assert!(!nothing_dropped_after(&empty, id(1)));
        assert!(nothing_dropped_after(&empty, id(3)));
        assert!(!nothing_trimmed_after(&empty, id(1)));
        assert!(nothing_trimmed_after(&empty, id(3)), "nothing came after the last id");
    }
}
