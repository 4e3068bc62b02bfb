//! The core's stream reader: one connection in XREAD BLOCK over every stream
//! its clients want, each from the last id the core has delivered. After a
//! reconnect it resumes from those ids, so no entry is lost across a Redis
//! restart. Entries that retention trimmed before the reader got to them,
//! connected or not, are announced as a gap (`check_retention`).

use std::collections::HashSet;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use feedgate_core::replay::StreamInfo;
use feedgate_core::resp::{Entry, ReplyError};
use feedgate_core::retention::{self, Hole, Tally};
use feedgate_core::{envelope, resp, ErrorCode, StreamId};

use crate::core::Core;
use crate::redis::conn::{ConnOptions, LinkError, RespConn};
use crate::redis::fanout::{deliver_sliced, Batch, Gap};
use crate::redis::links::{Link, LINK_BOUND};
use crate::redis::supervisor::supervise;

mod args;
use args::{Ids, Keys};

/// Entries read per stream per XREAD. A reply is fanned out in slices
/// (`fanout.rs`), so this bounds the reply's memory, not any client's queue.
const READ_COUNT: &[u8] = b"512";
/// Longest XREAD BLOCK: the reader re-issues its read at least this often, a
/// safety net for a new channel whose unblock raced with the read.
const BLOCK_MS: &[u8] = b"2000";
/// Up to this many live streams, the reader sends the witness of retention
/// with every read, for the streams read from their cursor; past it, it asks
/// for the streams that need it once their entries are in (`read_loop`).
/// About where the two cost the same, measured:
/// results/retention-gaps-2026-12-02.md.
const PIPELINED_WITNESS_KEYS: usize = 16;
/// An XREAD may take its BLOCK plus the link bound with nothing heard before
/// the link is taken down (a Redis that keeps the socket open but stops
/// answering would otherwise stall delivery silently).
const READ_BOUND: Duration = Duration::from_millis(2000).saturating_add(LINK_BOUND);

/// Keeps the core's stream reader up.
pub(super) async fn run(core: Rc<Core>) {
    let options = || ConnOptions {
        on_push: None,
        stall_after: READ_BOUND,
        ping: true,
    };
    let session_core = core.clone();
    supervise(core, Link::Reader, options, move |conn| {
        session(session_core.clone(), conn)
    })
    .await
}

async fn session(core: Rc<Core>, conn: Rc<RespConn>) {
    let id = match conn
        .call(&[b"CLIENT", b"ID"])
        .await
        .and_then(|r| Ok(resp::integer(&r)?))
    {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "CLIENT ID failed");
            return;
        }
    };
    core.redis.reader_id.set(Some(id));
    let result = read_loop(&core, &conn).await;
    tracing::warn!(reason = %result, "redis stream reader stopped");
    core.redis.reader_id.set(None);
}

async fn read_loop(core: &Rc<Core>, conn: &Rc<RespConn>) -> LinkError {
    // Streams the last read found more than one entry in: the reader is
    // behind on them, and the next read will not wait.
    let mut behind: HashSet<Bytes> = HashSet::new();
    let mut kept_keys = Keys::default();
    let mut ids = Ids::default();
    let mut coalescing = ReadCoalescing::default();
    loop {
        let cursors = core.hub.borrow().stream_cursors();
        let generation = core.redis.streams_gen.get();
        core.redis.reader_gen.set(generation);
        if cursors.is_empty() {
            core.redis.tallies.borrow_mut().clear();
            monoio::select! {
                _ = core.redis.streams_changed.wait() => continue,
                _ = conn.closed() => return LinkError::Down,
            }
        }
        forget_tallies_of_gone_channels(core, cursors.len());
        // Hot path, once per read: the keys are the last read's while the
        // streams are the same ones, and the ids go into one reused buffer.
        let keys = kept_keys.of(cursors.iter().map(|(name, _)| name), |name| core.settings.key_of(name));
        // The witness of retention, in the read itself: a stream the reader is
        // behind on is read from just before its cursor, so the cursor's own
        // entry comes first if it is still there, which proves that nothing
        // after it was trimmed (trimming takes the oldest entries first). One
        // entry more in a reply that has many; no command more. Not for the
        // others: a read from before a retained entry never blocks.
        let from: Vec<Option<StreamId>> = cursors
            .iter()
            .zip(keys)
            .map(|((_, cursor), key)| {
                behind
                    .contains(key.as_slice())
                    .then(|| retention::before(*cursor))
                    .flatten()
            })
            .collect();
        ids.fill(
            cursors
                .iter()
                .zip(&from)
                .map(|((_, cursor), from)| from.unwrap_or(*cursor)),
        );
        let arrived_after = coalescing.wait(core, generation, &cursors).await;
        let mut args: Vec<&[u8]> = Vec::with_capacity(6 + 2 * keys.len());
        args.extend_from_slice(&[b"XREAD", b"COUNT", READ_COUNT, b"BLOCK", BLOCK_MS, b"STREAMS"]);
        args.extend(keys.iter().map(Vec::as_slice));
        args.extend(ids.iter());
        // The connection's watchdog bounds this wait (READ_BOUND).
        let read = conn.call(&args);
        // The streams read from their cursor carry no witness: with few
        // streams, theirs (each one's first entry, `read_witness`) goes right
        // behind the XREAD. Redis runs it as soon as the XREAD answers and both
        // replies come back in one write, no round trip. Its cost grows with
        // the streams it names; with more, `check_retention` asks afterwards,
        // for the streams that need it.
        let cold: Vec<&[u8]> = keys
            .iter()
            .zip(&from)
            .filter(|(_, from)| from.is_none())
            .map(|(key, _)| key.as_slice())
            .collect();
        let witness = (!cold.is_empty() && keys.len() <= PIPELINED_WITNESS_KEYS).then(|| read_witness(conn, &cold));
        let reply = match read.await {
            Ok(reply) => reply,
            Err(e) => return e,
        };
        coalescing.answered();
        match resp::xread(reply) {
            Ok(streams) => match check_retention(core, conn, &cursors, keys, &from, streams, witness).await {
                Ok((batches, counts)) => {
                    behind = batches
                        .iter()
                        .zip(counts)
                        .filter(|(_, read)| *read > 1)
                        .map(|(b, _)| b.key.clone())
                        .collect();
                    deliver_sliced(core, batches, arrived_after).await
                }
                Err(e) => return e,
            },
            Err(e) => {
                // One bad key (not a stream) fails the whole XREAD: find it and
                // drop its channel so the others keep flowing.
                tracing::warn!(error = %e, "XREAD failed");
                drop_non_streams(core).await;
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Read coalescing: when every live stream channel on this core accepts a
/// write delay, the reader waits the least of them after each answer before it
/// reads again, so one XREAD brings several entries per stream. The whole
/// delay, not part of it: the next reply's deliveries are then due on arrival,
/// so waiting in the reader rather than in the writers gives the same latency
/// (at most the delay) with half the reads and writes of a half-and-half split.
/// Measured on the 50 x 5 scenario (results/perf-2026-12-02*.md): without it,
/// the reader's round per entry (command, reply, decode, fan-out pass), not the
/// client writes, was most of the CPU per delivery, and batching writes alone
/// saved almost nothing. The deliveries' write delay counts from the previous
/// answer, so the two waits together stay within the delay.
#[derive(Default)]
struct ReadCoalescing {
    /// The stream set's generation the delay was computed for, and the delay.
    delay_of: Option<(u64, Duration)>,
    last_answer: Option<Instant>,
}

impl ReadCoalescing {
    /// Waits before the next read when coalescing; returns when the entries of
    /// that read can have arrived at the earliest (None: not coalescing).
    async fn wait(&mut self, core: &Core, generation: u64, cursors: &[(Rc<str>, StreamId)]) -> Option<Instant> {
        let delay = match self.delay_of {
            Some((of, delay)) if of == generation => delay,
            _ => {
                let delay = least_write_delay(core, cursors);
                self.delay_of = Some((generation, delay));
                delay
            }
        };
        let since = self.last_answer.filter(|_| !delay.is_zero())?;
        let until = since + delay;
        let now = Instant::now();
        if until > now {
            monoio::time::sleep(until - now).await;
        }
        Some(since)
    }

    fn answered(&mut self) {
        self.last_answer = Some(Instant::now());
    }
}

/// The least write delay of the namespaces of `cursors`' channels.
fn least_write_delay(core: &Core, cursors: &[(Rc<str>, StreamId)]) -> Duration {
    let limits = &core.settings.limits;
    cursors
        .iter()
        .map(|(name, _)| {
            let namespace = core.settings.namespaces.of(name);
            Duration::from_micros(namespace.write_delay_us.unwrap_or(limits.write_delay_us))
        })
        .min()
        .unwrap_or(Duration::ZERO)
}

/// Drops the tallies of channels that are no longer live. Every live stream
/// channel gets one when it goes live, so there are stale ones only when
/// there are more tallies than live channels.
fn forget_tallies_of_gone_channels(core: &Core, live: usize) {
    let mut tallies = core.redis.tallies.borrow_mut();
    if tallies.len() > live {
        let hub = core.hub.borrow();
        tallies.retain(|name, _| hub.is_live(name));
    }
}

/// Turns an XREAD reply into batches for the hub, with the gaps retention
/// left before them (PROTOCOL.md section 6), and moves the channels' tallies
/// on past what they deliver. Also returns how many new entries the read
/// found in each batch's stream.
///
/// Hot path. A stream is delivered as read when nothing can lie between its
/// cursor and its first entry read (the next id in the same millisecond), or
/// when an entry at or before its cursor was still in Redis at or after the
/// read (`retention::witnessed`): trimming has not caught up with the reader,
/// which is the normal case. That entry is the cursor's own for a stream
/// read from just before it (`from`, by index in `keys`), else the stream's
/// first entry: from `witness`, sent with the XREAD for the streams read from
/// their cursor, or read now. Streams that none of this clears are read
/// again with XINFO STREAM in one MULTI (one more round trip): their entries
/// from the first read are dropped, so the gap is decided on exactly the
/// entries delivered.
async fn check_retention(
    core: &Core,
    conn: &RespConn,
    cursors: &[(Rc<str>, StreamId)],
    keys: &[Vec<u8>],
    from: &[Option<StreamId>],
    streams: Vec<(Bytes, Vec<Entry>)>,
    witness: Option<impl Future<Output = Result<resp::Reply, LinkError>>>,
) -> Result<(Vec<Batch>, Vec<usize>), LinkError> {
    // Each batch with the index of its channel in `cursors`, and the XINFO
    // read with its entries when they were read again.
    let mut read: Vec<(Batch, usize, Option<StreamInfo>)> = Vec::with_capacity(streams.len());
    // Indices into `read` of the batches not cleared yet.
    let mut unproven = Vec::new();
    let mut at = 0;
    for (key, mut entries) in streams {
        let Some(i) = find_key(keys, &key, &mut at) else {
            continue;
        };
        let cursor = cursors[i].1;
        let Some(first) = entries.first() else { continue };
        let proven = if from[i].is_some() {
            // Read from just before the cursor: its own entry, already
            // delivered, first if it is still there.
            let kept = first.id == cursor;
            if kept {
                entries.remove(0);
            }
            kept
        } else {
            retention::follows(cursor, first.id)
        };
        if entries.is_empty() {
            continue;
        }
        if !proven {
            unproven.push(read.len());
        }
        read.push((
            Batch {
                key,
                entries,
                gap: None,
            },
            i,
            None,
        ));
    }
    // A witness that failed proves nothing: those streams are read again.
    // One sent with the read names the streams read from their cursor, and
    // is awaited only if one of them needs it; else its reply is dropped as
    // it comes, never turned into entries. The others are asked for now.
    let sent = witness.is_some();
    let (named, late): (Vec<usize>, Vec<usize>) =
        unproven.into_iter().partition(|&r| sent && from[read[r].1].is_none());
    let named_firsts = match witness {
        Some(witness) if !named.is_empty() => Some(witness.await?),
        _ => None,
    };
    let late_firsts = if late.is_empty() {
        None
    } else {
        let keys: Vec<&[u8]> = late.iter().map(|&r| read[r].0.key.as_ref()).collect();
        Some(read_witness(conn, &keys).await?)
    };
    let mut again = Vec::new();
    for (rows, reply) in [(named, named_firsts), (late, late_firsts)] {
        let firsts = reply.map(|w| resp::xread(w).unwrap_or_default()).unwrap_or_default();
        let mut first_at = 0;
        for r in rows {
            let (batch, i, _) = &read[r];
            let first = find_stream(&firsts, &batch.key, &mut first_at).and_then(|s| firsts[s].1.first());
            if !retention::witnessed(first.map(|e| e.id), cursors[*i].1) {
                again.push(r);
            }
        }
    }
    if !again.is_empty() {
        let channels: Vec<usize> = again.iter().map(|&r| read[r].1).collect();
        let (mut streams, infos) = read_exactly(conn, cursors, keys, &channels).await?;
        let mut at = 0;
        for (&r, info) in again.iter().zip(infos) {
            let (batch, i, read_info) = &mut read[r];
            let (name, cursor) = &cursors[*i];
            let entries = find_stream(&streams, &batch.key, &mut at).map(|s| std::mem::take(&mut streams[s].1));
            let hole = match &info {
                Some(info) => retention::hole_after(info, *cursor, core.redis.tallies.borrow().get(name)),
                // XINFO failed: the key is gone, or no longer a stream.
                None => Hole::Gap { dropped: None },
            };
            batch.entries = entries.unwrap_or_default();
            if let (Hole::Gap { dropped }, false) = (hole, batch.entries.is_empty()) {
                tracing::debug!(channel = %name, after = %cursor, ?dropped, "retention overtook the stream reader");
                batch.gap = Some(Gap {
                    after: *cursor,
                    dropped,
                });
            }
            *read_info = info;
        }
        // A stream emptied meanwhile delivers nothing yet: the read after
        // its next entry decides.
        read.retain(|(batch, _, _)| !batch.entries.is_empty());
    }
    count_on(core, cursors, &read);
    let counts = read.iter().map(|(batch, _, _)| batch.entries.len()).collect();
    Ok((read.into_iter().map(|(batch, _, _)| batch).collect(), counts))
}

/// Moves the tally of each channel in `read` to the last id it delivers.
fn count_on(core: &Core, cursors: &[(Rc<str>, StreamId)], read: &[(Batch, usize, Option<StreamInfo>)]) {
    let mut tallies = core.redis.tallies.borrow_mut();
    for (batch, i, info) in read {
        let Some(last) = batch.entries.last() else { continue };
        let (name, cursor) = &cursors[*i];
        let tally = match tallies.get(name) {
            // Made for another cursor: the channel was set up again while
            // the read was out, and the tally is the new one's.
            Some(t) if t.cursor != *cursor => continue,
            tally => tally.copied(),
        };
        let hole = batch.gap.map_or(Hole::None, |g| Hole::Gap { dropped: g.dropped });
        let delivered = batch.entries.len() as u64;
        match Tally::after(tally, info.as_ref(), hole, delivered, last.id) {
            Some(t) => tallies.insert(name.clone(), t),
            None => tallies.remove(name),
        };
    }
}

/// Sends `XREAD COUNT 1 STREAMS <keys> 0 ...`: each stream's first entry.
fn read_witness(
    conn: &RespConn,
    keys: &[&[u8]],
) -> impl std::future::Future<Output = Result<resp::Reply, LinkError>> + 'static {
    let mut args: Vec<&[u8]> = vec![b"XREAD", b"COUNT", b"1", b"STREAMS"];
    args.extend_from_slice(keys);
    args.extend(std::iter::repeat_n(&b"0"[..], keys.len()));
    conn.call(&args)
}

/// Reads the entries after the cursors of `channels` (indices into
/// `cursors`) with each stream's XINFO STREAM, atomically (MULTI/EXEC): the
/// counts then describe exactly the entries read. A failed XINFO (no such
/// key) gives `None`.
async fn read_exactly(
    conn: &RespConn,
    cursors: &[(Rc<str>, StreamId)],
    keys: &[Vec<u8>],
    channels: &[usize],
) -> Result<(Vec<(Bytes, Vec<Entry>)>, Vec<Option<StreamInfo>>), LinkError> {
    let ids: Vec<String> = channels.iter().map(|&i| cursors[i].1.to_string()).collect();
    let mut args: Vec<&[u8]> = vec![b"XREAD", b"COUNT", READ_COUNT, b"STREAMS"];
    args.extend(channels.iter().map(|&i| keys[i].as_slice()));
    args.extend(ids.iter().map(String::as_bytes));
    // Queued back to back in one synchronous step, so nothing else on the
    // connection comes between them.
    let multi = conn.call(&[b"MULTI"]);
    let xread = conn.call(&args);
    let infos: Vec<_> = channels
        .iter()
        .map(|&i| conn.call(&[b"XINFO", b"STREAM", &keys[i]]))
        .collect();
    let exec = conn.call(&[b"EXEC"]);
    resp::expect_ok(&multi.await?)?;
    xread.await?;
    for info in infos {
        info.await?;
    }
    let resp::Reply::Array { data, .. } = exec.await? else {
        return Err(ReplyError::Shape("EXEC reply").into());
    };
    let mut replies = data.into_iter();
    let streams = resp::xread(replies.next().ok_or(ReplyError::Shape("EXEC reply"))?)?;
    let infos: Vec<Option<StreamInfo>> = replies.map(|r| resp::stream_info(r).ok()).collect();
    if infos.len() != channels.len() {
        return Err(ReplyError::Shape("EXEC reply").into());
    }
    Ok((streams, infos))
}

/// Where `key` is in `keys`, looking from `*at` on (replies list keys in the
/// order they were asked for, so this is one step each in the common case).
fn find_key(keys: &[Vec<u8>], key: &[u8], at: &mut usize) -> Option<usize> {
    let n = keys.len();
    let i = (0..n).map(|k| (*at + k) % n).find(|&i| keys[i] == key)?;
    *at = i + 1;
    Some(i)
}

/// Where stream `key` is in an XREAD reply, looking from `*at` on.
fn find_stream(streams: &[(Bytes, Vec<Entry>)], key: &[u8], at: &mut usize) -> Option<usize> {
    let n = streams.len();
    let i = (0..n).map(|k| (*at + k) % n).find(|&i| streams[i].0 == key)?;
    *at = i + 1;
    Some(i)
}

async fn drop_non_streams(core: &Rc<Core>) {
    let Some(pool) = core.redis.pool() else { return };
    let cursors = core.hub.borrow().stream_cursors();
    for (name, _) in cursors {
        let key = core.settings.key_of(&name);
        let Ok(reply) = pool.call(&[b"TYPE", &key]).await else {
            return;
        };
        let kind = match &reply {
            resp::Reply::SimpleString { data, .. } => data.clone(),
            _ => continue,
        };
        if &kind[..] == b"stream" || &kind[..] == b"none" {
            continue;
        }
        let message = format!(
            "channel {name} dropped: its Redis key holds a {}, not a stream",
            String::from_utf8_lossy(&kind)
        );
        drop_channel(core, &name, &message);
    }
}

/// Removes `name` from the core, telling each subscriber why.
fn drop_channel(core: &Rc<Core>, name: &str, message: &str) {
    tracing::warn!(channel = name, "{message}");
    let json = envelope::error(ErrorCode::Internal, message, None);
    let conns = core.hub.borrow_mut().drop_channel(name);
    for conn in conns {
        conn.subs.borrow_mut().remove(name);
        conn.send_json(&json);
    }
}

/// Tells the reader that the set of live streams changed, and interrupts its
/// blocking XREAD (CLIENT UNBLOCK from a pool connection) so a new channel
/// starts flowing at once rather than after the block times out.
pub fn wake_reader(core: &Rc<Core>) {
    let links = &core.redis;
    let generation = links.streams_gen.get() + 1;
    links.streams_gen.set(generation);
    links.streams_changed.notify();
    let Some(reader_id) = links.reader_id.get() else { return };
    let core = core.clone();
    monoio::spawn(async move {
        let id = reader_id.to_string();
        // The XREAD may not have reached Redis yet (unblock answers 0): retry
        // briefly while the reader's in-flight read predates the change.
        for _ in 0..20 {
            if core.redis.reader_gen.get() >= generation || core.redis.reader_id.get() != Some(reader_id) {
                return;
            }
            let Some(pool) = core.redis.pool() else { return };
            match pool.call(&[b"CLIENT", b"UNBLOCK", id.as_bytes()]).await {
                Ok(reply) if resp::integer(&reply) == Ok(1) => return,
                Ok(_) => monoio::time::sleep(Duration::from_millis(2)).await,
                Err(_) => return,
            }
        }
    });
}
