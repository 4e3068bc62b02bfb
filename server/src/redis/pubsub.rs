//! The core's pub/sub connection: SUBSCRIBE to the union of what local clients
//! want, pushes fanned out through the hub, resubscribed after a reconnect.
//!
//! Every confirmation is checked against the hub: Redis keeps no subscription
//! that no local client holds (a subscribe that timed out or left while its
//! SUBSCRIBE was in flight is undone when the confirmation arrives).

use std::rc::Rc;

use feedgate_core::channel::Source;
use feedgate_core::resp::Push;
use feedgate_core::StreamId;

use crate::core::Core;
use crate::redis::conn::{ConnOptions, Incoming, RespConn};
use crate::redis::links::{Link, LINK_BOUND};
use crate::redis::supervisor::supervise;

/// Keeps the core's pub/sub link up.
pub(super) async fn run(core: Rc<Core>) {
    let options = {
        let core = core.clone();
        move || {
            let handler_core = core.clone();
            ConnOptions {
                on_push: Some(Box::new(move |incoming| on_push(&handler_core, incoming))),
                stall_after: LINK_BOUND,
                ping: true,
            }
        }
    };
    let session_core = core.clone();
    supervise(core, Link::Pubsub, options, move |conn| {
        session(session_core.clone(), conn)
    })
    .await
}

async fn session(core: Rc<Core>, conn: Rc<RespConn>) {
    // Answers to SUBSCRIBEs sent on an older connection will never come.
    core.redis.unconfirmed.borrow_mut().clear();
    *core.redis.pubsub.borrow_mut() = Some(conn.clone());
    // Channels that were live before the link dropped: subscribe again.
    for name in core.hub.borrow().channels_of(Source::Pubsub, true) {
        subscribe(&core, &conn, &name);
    }
    conn.closed().await;
    *core.redis.pubsub.borrow_mut() = None;
    core.redis.unconfirmed.borrow_mut().clear();
    // Subscriptions still being set up cannot complete: their clients get
    // `unavailable`.
    let starting = core.hub.borrow().channels_of(Source::Pubsub, false);
    for name in starting {
        core.hub.borrow_mut().fail(&name);
    }
}

/// Sends SUBSCRIBE for `name`; the hub marks it live when Redis confirms.
pub fn subscribe(core: &Core, conn: &RespConn, name: &Rc<str>) -> bool {
    let key = core.settings.key_of(name);
    if !conn.send_ack(&key, true) {
        return false;
    }
    *core.redis.unconfirmed.borrow_mut().entry(name.clone()).or_insert(0) += 1;
    core.redis.refusals.borrow_mut().remove(name);
    true
}

/// Sends UNSUBSCRIBE for `name` (no local client wants it any more).
pub fn unsubscribe(core: &Core, name: &str) {
    if let Some(conn) = core.redis.pubsub() {
        conn.send_ack(&core.settings.key_of(name), false);
    }
}

/// Counts one answer to a SUBSCRIBE of `name`; true when no other SUBSCRIBE
/// of it is still in flight (this answer is the one that decides).
fn answered(core: &Core, name: &str) -> bool {
    let mut unconfirmed = core.redis.unconfirmed.borrow_mut();
    match unconfirmed.get_mut(name) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            unconfirmed.remove(name);
            true
        }
        None => true,
    }
}

/// Whether a local client holds pub/sub channel `name` (live or being set up).
fn held(core: &Core, name: &str) -> bool {
    let hub = core.hub.borrow();
    hub.is_live(name) || hub.channels_of(Source::Pubsub, false).iter().any(|n| &**n == name)
}

fn on_push(core: &Core, incoming: Incoming) {
    let push = match incoming {
        Incoming::Push(push) => push,
        Incoming::Refused { channel, text } => {
            let Some(name) = core.settings.channel_of(&channel) else {
                return;
            };
            tracing::warn!(channel = name, error = %text, "redis refused a pub/sub command");
            if !answered(core, name) {
                return;
            }
            let starting = core.hub.borrow().channels_of(Source::Pubsub, false);
            if let Some(name) = starting.iter().find(|n| &***n == name) {
                // Kept only for the subscribe that waits for it, which takes it.
                core.redis.refusals.borrow_mut().insert(name.clone(), text);
                core.hub.borrow_mut().fail(name);
            }
            return;
        }
        Incoming::StrayError(text) => {
            tracing::warn!(error = %text, "redis error on the pub/sub link with no command waiting");
            return;
        }
    };
    match push {
        Push::Message { channel, body } => {
            let Some(name) = core.settings.channel_of(&channel) else {
                return;
            };
            let mut frames = core.frames.borrow_mut();
            core.hub.borrow_mut().deliver_pubsub(name, &body, &mut frames);
        }
        Push::Subscribed { channel } => {
            let Some(name) = core.settings.channel_of(&channel) else {
                return;
            };
            if !answered(core, name) {
                return;
            }
            if held(core, name) {
                core.hub.borrow_mut().set_live(name, StreamId::ZERO);
            } else {
                // Its subscribe gave up (timed out, or the client left) while
                // the SUBSCRIBE was in flight: nobody here wants it.
                tracing::debug!(channel = name, "undoing a subscription no local client holds");
                unsubscribe(core, name);
            }
        }
        Push::Unsubscribed { .. } | Push::Other => {}
    }
}
