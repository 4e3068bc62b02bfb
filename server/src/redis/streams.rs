//! The core's stream reader: one connection in XREAD BLOCK over every stream
//! its clients want, each from the last id the core has delivered. After a
//! reconnect it resumes from those ids, so no entry is lost across a Redis
//! restart.

use std::rc::Rc;
use std::time::Duration;

use feedgate_core::replay::nothing_trimmed_after;
use feedgate_core::{envelope, resp, ErrorCode};

use crate::core::Core;
use crate::redis::conn::{ConnOptions, LinkError, RespConn};
use crate::redis::fanout::deliver_sliced;
use crate::redis::links::{Link, LINK_BOUND};
use crate::redis::supervisor::supervise;

/// Entries read per stream per XREAD. A reply is fanned out in slices
/// (`fanout.rs`), so this bounds the reply's memory, not any client's queue.
const READ_COUNT: &[u8] = b"512";
/// Longest XREAD BLOCK: the reader re-issues its read at least this often, a
/// safety net for a new channel whose unblock raced with the read.
const BLOCK_MS: &[u8] = b"2000";
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
    drop_trimmed_past_cursor(&core, &conn).await;
    let result = read_loop(&core, &conn).await;
    tracing::warn!(reason = %result, "redis stream reader stopped");
    core.redis.reader_id.set(None);
}

async fn read_loop(core: &Rc<Core>, conn: &Rc<RespConn>) -> LinkError {
    loop {
        let cursors = core.hub.borrow().stream_cursors();
        core.redis.reader_gen.set(core.redis.streams_gen.get());
        if cursors.is_empty() {
            monoio::select! {
                _ = core.redis.streams_changed.wait() => continue,
                _ = conn.closed() => return LinkError::Down,
            }
        }
        let keys: Vec<Vec<u8>> = cursors.iter().map(|(name, _)| core.settings.key_of(name)).collect();
        let ids: Vec<String> = cursors.iter().map(|(_, id)| id.to_string()).collect();
        let mut args: Vec<&[u8]> = vec![b"XREAD", b"COUNT", READ_COUNT, b"BLOCK", BLOCK_MS, b"STREAMS"];
        args.extend(keys.iter().map(Vec::as_slice));
        args.extend(ids.iter().map(String::as_bytes));
        // The connection's watchdog bounds this wait (READ_BOUND).
        let reply = match conn.call(&args).await {
            Ok(reply) => reply,
            Err(e) => return e,
        };
        match resp::xread(reply) {
            Ok(streams) => deliver_sliced(core, streams).await,
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

/// After a reconnect: a stream trimmed past the core's cursor while Redis was
/// out of reach lost entries no client here has seen. Its subscribers are told,
/// with the id to resume from, instead of having ids skipped silently.
async fn drop_trimmed_past_cursor(core: &Rc<Core>, conn: &RespConn) {
    let cursors = core.hub.borrow().stream_cursors();
    for (name, cursor) in cursors {
        let key = core.settings.key_of(&name);
        let Ok(reply) = conn.call(&[b"XINFO", b"STREAM", &key]).await else {
            return;
        };
        let Ok(info) = resp::stream_info(reply) else { continue };
        if !nothing_trimmed_after(&info, cursor) {
            let message = format!(
                "channel {name} dropped: entries after {cursor} were trimmed before they could be delivered; subscribe again with since {cursor}"
            );
            drop_channel(core, &name, &message);
        }
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
