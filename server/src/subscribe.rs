//! subscribe and unsubscribe: joining the hub, setting up the core's Redis
//! subscription, and replays (`since`, `last`) with no gap and no duplicate
//! across the switch from history to live.
//!
//! The order that makes the switch exact: the subscriber joins the hub first,
//! with its live frames held back; its live deliveries start after the core's
//! cursor at that moment (`joined_at`). History is read up to that cursor,
//! sent, and only then are the held frames released.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use feedgate_core::channel::{Namespace, Source};
use feedgate_core::envelope::{self, StreamStart};
use feedgate_core::error::ProtocolError;
use feedgate_core::op::Start;
use feedgate_core::replay::{nothing_dropped_after, nothing_trimmed_after, StreamInfo};
use feedgate_core::resp::{self, Entry, Reply, ReplyError};
use feedgate_core::retention::Tally;
use feedgate_core::{ErrorCode, StreamId};

use crate::conn::{close_code, Conn, SLOW_CONSUMER_REASON};
use crate::core::Core;
use crate::hub::{How, Joined};
use crate::redis::{self, LinkError, RespConn};
use crate::snapshot;

/// How long setting up a channel (SUBSCRIBE confirmed, first stream position)
/// may take before the subscribe answers `unavailable`.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pub/sub channel's SUBSCRIBE may wait for Redis to confirm it. A
/// healthy Redis confirms at once, and a link that leaves a command unanswered
/// longer than its bound (3 s) is replaced anyway, so waiting past that bound
/// gains nothing.
const PUBSUB_SETUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one Redis command of a subscribe may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn unavailable() -> ProtocolError {
    ProtocolError::new(ErrorCode::Unavailable, "redis is unavailable right now; retry later")
}

/// Redis's own words stay in the log: WRONGTYPE tells a client that a key
/// exists, NOPERM names the ACL user. Clients get the code and a fixed message.
impl From<LinkError> for ProtocolError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Down | LinkError::Connect(_) => unavailable(),
            LinkError::Reply(ReplyError::Redis(text)) => {
                tracing::warn!(error = %text, "redis refused a command of a subscribe");
                ProtocolError::new(ErrorCode::Internal, "redis refused the command; see the server log")
            }
            LinkError::Reply(e) => {
                tracing::warn!(error = %e, "redis answered a subscribe's command oddly");
                ProtocolError::new(ErrorCode::Internal, "unexpected reply from redis; see the server log")
            }
        }
    }
}

/// A reply of the wrong shape, as a protocol error.
pub(crate) fn bad_reply(e: ReplyError) -> ProtocolError {
    LinkError::Reply(e).into()
}

/// Handles `subscribe`; replies (or errors) go to `conn`.
pub async fn subscribe(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    req: Option<u64>,
    channel: &str,
    start: Start,
    min_interval: Option<Duration>,
) {
    if let Err(e) = try_subscribe(core, conn, req, channel, start, min_interval).await {
        conn.send_json(&envelope::error(e.code, &e.message, req));
    }
}

async fn try_subscribe(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    req: Option<u64>,
    channel: &str,
    start: Start,
    min_interval: Option<Duration>,
) -> Result<(), ProtocolError> {
    let namespace = core.settings.namespaces.of(channel);
    let source = namespace.source;
    let limits = &core.settings.limits;
    if start == Start::Snapshot && namespace.key.is_none() {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            format!("`snapshot` needs a namespace with a `key`; {channel}'s has none"),
        ));
    }
    if source == Source::Pubsub && start != Start::Live {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            format!("`since`, `last` and `snapshot` apply to stream channels only; {channel} is pub/sub"),
        ));
    }
    if let Start::Last(n) = start {
        if n > limits.max_last {
            return Err(ProtocolError::new(
                ErrorCode::BadRequest,
                format!("`last` may be at most {}", limits.max_last),
            ));
        }
    }
    if conn.subs.borrow().contains(channel) {
        return Err(ProtocolError::new(
            ErrorCode::AlreadySubscribed,
            format!("already subscribed to {channel}"),
        ));
    }
    if conn.subs.borrow().len() >= limits.max_subscriptions {
        return Err(ProtocolError::new(
            ErrorCode::TooManySubscriptions,
            format!(
                "a connection may hold at most {} subscriptions",
                limits.max_subscriptions
            ),
        ));
    }
    if !core.redis.is_ready() {
        return Err(unavailable());
    }
    let how = How::new(namespace, min_interval);
    let (name, joined) = core.hub.borrow_mut().join(channel, &how, conn);
    conn.subs.borrow_mut().insert(name.clone());
    let delay = write_delay_of(core, namespace);
    if conn.subs.borrow().len() == 1 || delay < conn.write_delay() {
        conn.set_write_delay(delay);
    }
    let result = match source {
        Source::Stream => subscribe_stream(core, conn, req, &name, joined, start).await,
        Source::Pubsub => subscribe_pubsub(core, conn, req, &name, joined).await,
    };
    if result.is_err() {
        leave(core, conn, &name);
        refresh_write_delay(core, conn);
    }
    result
}

/// The write delay of a namespace's subscribers: its own, or `[limits]`'s.
fn write_delay_of(core: &Core, namespace: &Namespace) -> Duration {
    let us = namespace.write_delay_us.unwrap_or(core.settings.limits.write_delay_us);
    Duration::from_micros(us)
}

/// Sets `conn`'s write delay to the least of its namespaces' (after a
/// subscription ended; a connection going away needs none).
fn refresh_write_delay(core: &Core, conn: &Conn) {
    let namespaces = &core.settings.namespaces;
    let least = conn
        .subs
        .borrow()
        .iter()
        .map(|channel| write_delay_of(core, namespaces.of(channel)))
        .min();
    let default = Duration::from_micros(core.settings.limits.write_delay_us);
    conn.set_write_delay(least.unwrap_or(default));
}

/// Waits until `name` is live on this core, setting it up when `joined` says
/// this subscriber came first.
async fn until_live(
    core: &Rc<Core>,
    name: &Rc<str>,
    joined: Joined,
    setup: impl std::future::Future<Output = Result<(), ProtocolError>>,
) -> Result<(), ProtocolError> {
    let result = monoio::time::timeout(SETUP_TIMEOUT, wait_live(core, name, joined, setup)).await;
    result.unwrap_or_else(|_| {
        // The setup was abandoned with the timeout: whoever waits on the
        // channel is told `unavailable` rather than left waiting.
        if !core.hub.borrow().is_live(name) {
            core.hub.borrow_mut().fail(name);
        }
        Err(too_slow())
    })
}

fn too_slow() -> ProtocolError {
    ProtocolError::new(ErrorCode::Unavailable, "redis did not answer in time; retry later")
}

async fn wait_live(
    core: &Rc<Core>,
    name: &Rc<str>,
    joined: Joined,
    setup: impl std::future::Future<Output = Result<(), ProtocolError>>,
) -> Result<(), ProtocolError> {
    match joined {
        Joined::Live => return Ok(()),
        Joined::First(_) => {
            if let Err(e) = setup.await {
                core.hub.borrow_mut().fail(name);
                return Err(e);
            }
        }
        Joined::Wait(event) => event.wait().await,
    }
    if core.hub.borrow().is_live(name) {
        Ok(())
    } else {
        Err(unavailable())
    }
}

async fn subscribe_pubsub(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    req: Option<u64>,
    name: &Rc<str>,
    joined: Joined,
) -> Result<(), ProtocolError> {
    let event = match &joined {
        Joined::First(event) => Some(event.clone()),
        _ => None,
    };
    let setup = async {
        let link = core.redis.pubsub().ok_or_else(unavailable)?;
        if !redis::subscribe_pubsub(core, &link, name) {
            return Err(unavailable());
        }
        // Redis confirms with a push; the push handler marks the channel live.
        if let Some(event) = event {
            if monoio::time::timeout(PUBSUB_SETUP_TIMEOUT, event.wait()).await.is_err() {
                // The SUBSCRIBE stays in flight: if Redis confirms it later,
                // the push handler finds no local holder and undoes it.
                return Err(too_slow());
            }
        }
        Ok(())
    };
    until_live(core, name, joined, setup).await.map_err(|e| {
        // A refusal says more than "unavailable": retrying will not help. It
        // is taken, so none is kept once its subscribe has answered. Redis's
        // text (it may name the ACL user) was logged when it came.
        match core.redis.refusals.borrow_mut().remove(name) {
            Some(_) => ProtocolError::new(
                ErrorCode::Internal,
                format!("redis refused SUBSCRIBE for {name}; see the server log"),
            ),
            None => e,
        }
    })?;
    conn.send_json(&envelope::subscribed(name, req, None));
    core.hub.borrow_mut().release(name, conn.id, None);
    Ok(())
}

async fn subscribe_stream(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    req: Option<u64>,
    name: &Rc<str>,
    joined: Joined,
    start: Start,
) -> Result<(), ProtocolError> {
    let key = core.settings.key_of(name);
    let setup = async {
        let (cursor, tally) = live_start(core, &key).await?;
        core.hub.borrow_mut().set_live(name, cursor);
        // With no await between, so the reader never sees the channel live
        // without its tally.
        if let Some(tally) = tally.filter(|_| core.hub.borrow().is_live(name)) {
            core.redis.tallies.borrow_mut().insert(name.clone(), tally);
        }
        redis::wake_reader(core);
        Ok(())
    };
    until_live(core, name, joined, setup).await?;
    let joined_at = core.hub.borrow().joined_at(name, conn.id).ok_or_else(unavailable)?;
    let (mut after, recovered) = match start {
        Start::Live => {
            subscribed(conn, name, req, joined_at, true);
            (joined_at, true)
        }
        Start::Last(n) => replay_last(core, conn, req, name, &key, n, joined_at).await?,
        Start::Since(since) => replay_since(core, conn, req, name, &key, since, joined_at).await?,
        Start::Snapshot => snapshot::replay_snapshot(core, conn, req, name, &key, joined_at).await?,
    };
    // Live frames held during the replay outgrew their bound (the core read a
    // burst meanwhile) and were dropped: read them from Redis too, until none
    // are missing. Then wait until the queue has room for what is held, which
    // the release queues at once. No await lies between the last check and
    // the release.
    loop {
        let dropped = core.hub.borrow_mut().take_dropped(name, conn.id);
        if let Some(through) = dropped {
            let _slot = core.replays.acquire().await;
            (after, _) = replay_pages(core, conn, name, &key, after, through, Pages::More { recovered }).await?;
            continue;
        }
        let held = core.hub.borrow().held_bytes(name, conn.id);
        if !conn.is_open() || conn.queued_bytes() + held <= conn.queue_limit() {
            break;
        }
        wait_for_drain(core, conn, name).await;
    }
    core.hub.borrow_mut().release(name, conn.id, Some(after));
    Ok(())
}

pub(crate) fn subscribed(conn: &Conn, name: &str, req: Option<u64>, position: StreamId, recovered: bool) {
    let start = StreamStart { position, recovered };
    conn.send_json(&envelope::subscribed(name, req, Some(start)));
}

pub(crate) fn pool(core: &Core) -> Result<Rc<RespConn>, ProtocolError> {
    core.redis.pool().ok_or_else(unavailable)
}

/// Awaits one reply, answering `unavailable` when Redis is down or slow.
pub(crate) async fn reply(
    call: impl std::future::Future<Output = Result<Reply, LinkError>>,
) -> Result<Reply, ProtocolError> {
    match monoio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(too_slow()),
    }
}

/// Where a stream channel going live starts: the id of the newest entry of
/// `key` (`0-0` when it is empty or missing), and how many entries the stream
/// was given up to there, which sizes the gap should retention ever overtake
/// the reader. Read atomically (MULTI/EXEC), so no entry comes between.
async fn live_start(core: &Core, key: &[u8]) -> Result<(StreamId, Option<Tally>), ProtocolError> {
    let (newest, info) = with_stream_info(core, key, &[b"XREVRANGE", key, b"+", b"-", b"COUNT", b"1"]).await?;
    let cursor = resp::entries(newest)
        .map_err(bad_reply)?
        .first()
        .map_or(StreamId::ZERO, |e| e.id);
    Ok((cursor, Tally::at_start(info.as_ref(), cursor)))
}

/// `last: n`: the newest `n` entries up to `until`, then live. Returns the id
/// after which held live frames are released, and what `recovered` said.
async fn replay_last(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    req: Option<u64>,
    name: &str,
    key: &[u8],
    n: u64,
    until: StreamId,
) -> Result<(StreamId, bool), ProtocolError> {
    if n == 0 {
        subscribed(conn, name, req, until, true);
        return Ok((until, true));
    }
    let _slot = core.replays.acquire().await;
    let position = start_of_last(core, key, n, until).await?;
    let first = Pages::First {
        req,
        promise: Promise::Recovered,
    };
    replay_pages(core, conn, name, key, position, until, first).await
}

/// The id just before the newest `n` entries up to `until` (`0-0` when the
/// stream holds no more than `n`), found by walking back a page at a time, so
/// that a large `last` never holds more than one page in memory.
async fn start_of_last(core: &Core, key: &[u8], n: u64, until: StreamId) -> Result<StreamId, ProtocolError> {
    let page = core.settings.limits.replay_page;
    // One extra entry names the position: the id just before the first one sent.
    let mut wanted = n + 1;
    let mut end = until.to_string();
    loop {
        let asked = wanted.min(page);
        let count = asked.to_string();
        let reply =
            reply(pool(core)?.call(&[b"XREVRANGE", key, end.as_bytes(), b"-", b"COUNT", count.as_bytes()])).await?;
        let entries = resp::entries(reply).map_err(bad_reply)?;
        let got = entries.len() as u64;
        wanted -= got.min(wanted);
        match entries.last() {
            Some(oldest) if wanted == 0 => return Ok(oldest.id),
            Some(oldest) if got == asked => end = format!("({}", oldest.id),
            _ => return Ok(StreamId::ZERO),
        }
    }
}

/// `since`: every entry after `since` up to `until`, paged, then live.
async fn replay_since(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    req: Option<u64>,
    name: &str,
    key: &[u8],
    since: StreamId,
    until: StreamId,
) -> Result<(StreamId, bool), ProtocolError> {
    let _slot = core.replays.acquire().await;
    let first = Pages::First {
        req,
        promise: Promise::Check,
    };
    replay_pages(core, conn, name, key, since, until, first).await
}

/// What the `subscribed` reply of a replay says about `recovered`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Promise {
    /// `true`: nothing was asked for that could be missing (`last`).
    Recovered,
    /// Whatever the stream's XINFO proves about the entries after `since`.
    Check,
}

/// Where a run of replay pages stands.
#[derive(Clone, Copy)]
enum Pages {
    /// The replay's first run: its first page decides the `subscribed` reply.
    First { req: Option<u64>, promise: Promise },
    /// A catch-up on dropped live frames, after `recovered` was answered.
    More { recovered: bool },
}

/// Sends every entry after `since` up to `until`, a page at a time (after the
/// `subscribed` reply with `since` as its position, on a first run). Returns
/// the id after which held live frames are released, and `recovered`.
async fn replay_pages(
    core: &Rc<Core>,
    conn: &Rc<Conn>,
    name: &str,
    key: &[u8],
    since: StreamId,
    until: StreamId,
    pages: Pages,
) -> Result<(StreamId, bool), ProtocolError> {
    let page = core.settings.limits.replay_page;
    let mut after = since;
    let mut recovered = match pages {
        Pages::First { .. } => None,
        Pages::More { recovered } => Some(recovered),
    };
    loop {
        let (entries, info) = read_page(core, key, after, until, page).await?;
        match (recovered, pages) {
            (None, Pages::First { req, promise }) => {
                let answer =
                    promise == Promise::Recovered || info.is_some_and(|info| nothing_dropped_after(&info, since));
                subscribed(conn, name, req, since, answer);
                recovered = Some(answer);
            }
            // Trimming overtook the replay: entries after `after`, the last id
            // sent, are gone. Announce the gap before this page's entries
            // (PROTOCOL.md section 6) and go on; how many is not known.
            (Some(_), _) if !info.is_some_and(|info| nothing_trimmed_after(&info, after)) => {
                conn.send_json(&envelope::gap(name, Some(after), None));
            }
            _ => {}
        }
        send_history(core, conn, name, &entries).await;
        match entries.last() {
            Some(last)
                if entries.len() as u64 == page
                    && last.id < until
                    && conn.is_open()
                    && conn.subs.borrow().contains(name) =>
            {
                after = last.id
            }
            _ => break,
        }
    }
    Ok((after.max(since).max(until), recovered.unwrap_or(false)))
}

/// One XRANGE page after `after` and the stream's XINFO, read atomically
/// (MULTI/EXEC) so trimming cannot slip in between.
async fn read_page(
    core: &Core,
    key: &[u8],
    after: StreamId,
    until: StreamId,
    page: u64,
) -> Result<(Vec<Entry>, Option<StreamInfo>), ProtocolError> {
    let start = format!("({after}");
    let end = until.to_string();
    let count = page.to_string();
    let command: [&[u8]; 6] = [
        b"XRANGE",
        key,
        start.as_bytes(),
        end.as_bytes(),
        b"COUNT",
        count.as_bytes(),
    ];
    let (range, info) = with_stream_info(core, key, &command).await?;
    let entries = if after >= until {
        Vec::new()
    } else {
        resp::entries(range).map_err(bad_reply)?
    };
    Ok((entries, info))
}

/// Runs `command` and `XINFO STREAM key` in one MULTI/EXEC, so nothing (no
/// trimming, no new entry) comes between them; returns the command's reply
/// and the stream's info (none for a missing key, which proves nothing).
async fn with_stream_info(
    core: &Core,
    key: &[u8],
    command: &[&[u8]],
) -> Result<(Reply, Option<StreamInfo>), ProtocolError> {
    let link = pool(core)?;
    // Queued back to back in one synchronous step: nothing can come between
    // them on the shared connection.
    let multi = link.call(&[b"MULTI"]);
    let queued = link.call(command);
    let info = link.call(&[b"XINFO", b"STREAM", key]);
    let exec = link.call(&[b"EXEC"]);
    resp::expect_ok(&reply(multi).await?).map_err(bad_reply)?;
    let _queued = (reply(queued).await?, reply(info).await?);
    let Reply::Array { data, .. } = reply(exec).await? else {
        return Err(bad_reply(ReplyError::Shape("EXEC reply")));
    };
    let [result, info]: [Reply; 2] = data
        .try_into()
        .map_err(|_| bad_reply(ReplyError::Shape("EXEC reply")))?;
    Ok((result, resp::stream_info(info).ok()))
}

/// Most history bytes one replay keeps queued for its client; with
/// `max_replays_per_core` this bounds what replays hold on a core.
const REPLAY_WINDOW: usize = 1024 * 1024;

/// Sends history frames, waiting for the client to drain whenever the replay's
/// window is full, so a long replay never trips the slow-consumer limit by
/// itself. A client that takes nothing for the pong timeout is closed as a
/// slow consumer: the replay holds its op, so the keepalive cannot judge it.
pub(crate) async fn send_history(core: &Core, conn: &Conn, name: &str, entries: &[Entry]) {
    let window = (conn.queue_limit() / 2).min(REPLAY_WINDOW);
    for entry in entries {
        while conn.is_open() && conn.queued_bytes() > window {
            wait_for_drain(core, conn, name).await;
        }
        // The channel may have been dropped under the replay (its key changed
        // type): no history for a channel the client no longer holds.
        if !conn.is_open() || !conn.subs.borrow().contains(name) {
            return;
        }
        let frame: Bytes = core.frames.borrow_mut().stream_delivery(name, entry.id, &entry.fields);
        conn.send(frame);
    }
}

/// Waits for the client's writer to move something; a client that takes
/// nothing for the pong timeout is closed as a slow consumer (a replay holds
/// its op, so the keepalive cannot judge it).
async fn wait_for_drain(core: &Core, conn: &Conn, name: &str) {
    let stuck_after = Duration::from_millis(core.settings.limits.pong_timeout_ms);
    if monoio::time::timeout(stuck_after, conn.drained.wait()).await.is_err() {
        tracing::debug!(conn = conn.id, channel = name, "replay made no progress");
        conn.close(close_code::SLOW_CONSUMER, SLOW_CONSUMER_REASON);
    }
}

/// Handles `unsubscribe`.
pub fn unsubscribe(core: &Rc<Core>, conn: &Rc<Conn>, req: Option<u64>, channel: &str) {
    if !conn.subs.borrow().contains(channel) {
        let message = format!("not subscribed to {channel}");
        conn.send_json(&envelope::error(ErrorCode::NotSubscribed, &message, req));
        return;
    }
    leave(core, conn, channel);
    refresh_write_delay(core, conn);
    conn.send_json(&envelope::unsubscribed(channel, req));
}

/// Removes `conn` from `channel`; the last local subscriber leaving drops the
/// core's Redis subscription.
pub fn leave(core: &Rc<Core>, conn: &Conn, channel: &str) {
    conn.subs.borrow_mut().remove(channel);
    let emptied = core.hub.borrow_mut().leave(channel, conn.id);
    if let Some(channel) = emptied {
        match channel.source {
            Source::Pubsub => redis::unsubscribe_pubsub(core, &channel.name),
            Source::Stream => redis::wake_reader(core),
        }
    }
}
