//! `snapshot: true`: the newest entry of each key value among the newest
//! `max_last` entries, in id order, then live (PROTOCOL.md section 6).
//!
//! The snapshot is read like `last`: after the subscriber joined the hub with
//! its live frames held, up to the core's cursor at that moment (`until`), so
//! the switch to live has no gap and no duplicate. The stream is walked
//! backwards a page at a time (XREVRANGE, `limits.replay_page` entries), and
//! only the first entry met for each key value is kept: walking newest first,
//! that is the key's newest. What is held is bounded by the number of distinct
//! keys in the window, so by `max_last` entries plus one page in flight.
//!
//! Entries without a key value (no such field, or a `data` payload that is not
//! a JSON object with it) stand for no instrument and are left out of the
//! snapshot; they still count towards the `max_last` window.

use std::collections::HashSet;
use std::rc::Rc;

use bytes::Bytes;
use feedgate_core::error::ProtocolError;
use feedgate_core::key::of_entry;
use feedgate_core::resp::{self, Entry};
use feedgate_core::{ErrorCode, StreamId};

use crate::conn::Conn;
use crate::core::Core;
use crate::subscribe::{bad_reply, pool, reply, send_history, subscribed};

/// Sends the snapshot of `name` (Redis key `key`) up to `until`, after the
/// `subscribed` reply; returns the id after which held live frames are
/// released (`until`) and `recovered` (`true`: a snapshot asks for nothing
/// that could be missing).
///
/// The reply's `position` is the id of the stream entry just before the
/// oldest entry the snapshot delivers (`0-0` when that entry is the stream's
/// first), or `until` when the snapshot is empty. Resuming from it with
/// `since` loses nothing: it delivers every snapshot entry not yet seen, plus
/// the older values and keyless entries in between, which applied in id order
/// leave the client with the same state. `until` would not do: a client that
/// left before any message arrived would resume without the snapshot.
pub async fn replay_snapshot(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    req: Option<u64>,
    name: &str,
    key: &[u8],
    until: StreamId,
) -> Result<(StreamId, bool), ProtocolError> {
    let Some(field) = core.settings.namespaces.of(name).key.as_deref() else {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            format!("`snapshot` needs a namespace with a `key`; {name}'s has none"),
        ));
    };
    let _slot = core.replays.acquire().await;
    let Some(snapshot) = newest_per_key(core, conn, name, key, field, until).await? else {
        // The client went away, or the channel was dropped under the walk.
        return Ok((until, true));
    };
    subscribed(conn, name, req, snapshot.position.unwrap_or(until), true);
    send_history(core, conn, name, &snapshot.entries).await;
    Ok((until, true))
}

/// The snapshot's entries and where it starts.
struct Snapshot {
    /// The newest entry of each key value, in id order.
    entries: Vec<Entry>,
    /// The id of the entry just before the first of `entries`, `0-0` when
    /// none precedes it; `None` when `entries` is empty.
    position: Option<StreamId>,
}

/// Walks back over the newest `max_last` entries up to `until`, keeping the
/// newest entry of each value of `field`. `None` when the client closed or no
/// longer holds `name` before the walk ended.
async fn newest_per_key(
    core: &Core,
    conn: &Conn,
    name: &str,
    key: &[u8],
    field: &str,
    until: StreamId,
) -> Result<Option<Snapshot>, ProtocolError> {
    let page = core.settings.limits.replay_page;
    // Window entries still to read. One entry past the window is read too: it
    // names the position when the window's oldest entry is kept.
    let mut left = core.settings.limits.max_last;
    let mut seen: HashSet<Bytes> = HashSet::new();
    // Newest first while walking.
    let mut kept: Vec<Entry> = Vec::new();
    let mut position = None;
    // The last kept entry's predecessor has not been met yet.
    let mut pending = false;
    let mut end = until.to_string();
    loop {
        if !conn.is_open() || !conn.subs.borrow().contains(name) {
            return Ok(None);
        }
        let asked = left.saturating_add(1).min(page);
        let count = asked.to_string();
        let reply =
            reply(pool(core)?.call(&[b"XREVRANGE", key, end.as_bytes(), b"-", b"COUNT", count.as_bytes()])).await?;
        let entries = resp::entries(reply).map_err(bad_reply)?;
        let got = entries.len() as u64;
        let oldest = entries.last().map(|e| e.id);
        for entry in entries {
            if pending {
                position = Some(entry.id);
                pending = false;
            }
            if left == 0 {
                break; // the entry past the window: it only names the position
            }
            left -= 1;
            let Some(value) = of_entry(&entry.fields, field) else {
                continue;
            };
            if !seen.contains(value) {
                seen.insert(Bytes::copy_from_slice(value));
                kept.push(owned(&entry));
                pending = true;
            }
        }
        // A short page is the start of the stream. A full one is followed by
        // another while window entries are left, or while the window's oldest
        // entry was kept and the one before it (the position) is unread.
        match oldest {
            Some(oldest) if (left > 0 || pending) && got == asked => end = format!("({oldest}"),
            _ => break,
        }
    }
    if pending {
        // The oldest kept entry is the oldest the stream holds up to `until`.
        position = Some(StreamId::ZERO);
    }
    kept.reverse();
    Ok(Some(Snapshot {
        entries: kept,
        position,
    }))
}

/// A copy of `entry` that owns its bytes: the parsed reply's fields are slices
/// of the connection's read buffer, and keeping a few entries of each page
/// must not keep every page's buffer alive.
fn owned(entry: &Entry) -> Entry {
    Entry {
        id: entry.id,
        fields: entry
            .fields
            .iter()
            .map(|(name, value)| (Bytes::copy_from_slice(name), Bytes::copy_from_slice(value)))
            .collect(),
    }
}
