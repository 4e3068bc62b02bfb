//! The core's pub/sub connection: SUBSCRIBE to the union of what local clients
//! want, pushes fanned out through the hub, resubscribed after a reconnect.

use std::rc::Rc;

use feedgate_core::channel::Source;
use feedgate_core::resp::Push;
use feedgate_core::StreamId;

use crate::core::Core;
use crate::redis::conn::{Incoming, RespConn};
use crate::redis::links::Backoff;

pub(super) async fn supervise(core: Rc<Core>) {
    let mut backoff = Backoff::new();
    while !core.shutdown.is_set() {
        let handler_core = core.clone();
        let on_push = Box::new(move |push| on_push(&handler_core, push));
        let settings = &core.settings;
        match RespConn::connect(settings.redis_addr, &settings.redis, Some(on_push)).await {
            Ok(conn) => {
                backoff.reset();
                core.redis.unconfirmed.borrow_mut().clear();
                *core.redis.pubsub.borrow_mut() = Some(conn.clone());
                // Channels that were live before the link dropped: subscribe again.
                for name in core.hub.borrow().channels_of(Source::Pubsub, true) {
                    subscribe(&core, &conn, &name);
                }
                core.update_readiness();
                conn.closed().await;
                *core.redis.pubsub.borrow_mut() = None;
                core.update_readiness();
                // Subscriptions still being set up cannot complete: their
                // clients get `unavailable`.
                let starting = core.hub.borrow().channels_of(Source::Pubsub, false);
                for name in starting {
                    core.hub.borrow_mut().fail(&name);
                }
                tracing::warn!("redis pub/sub connection lost; reconnecting");
            }
            Err(e) => tracing::debug!(error = %e, "redis pub/sub connection failed"),
        }
        backoff.wait().await;
    }
}

/// Sends SUBSCRIBE for `name`; the hub marks it live when Redis confirms.
pub fn subscribe(core: &Core, conn: &RespConn, name: &Rc<str>) -> bool {
    let key = core.settings.key_of(name);
    if !conn.send(&[b"SUBSCRIBE", &key]) {
        return false;
    }
    *core.redis.unconfirmed.borrow_mut().entry(name.clone()).or_insert(0) += 1;
    core.redis.refusals.borrow_mut().remove(name);
    true
}

/// Sends UNSUBSCRIBE for `name` (no local client wants it any more).
pub fn unsubscribe(core: &Core, name: &str) {
    if let Some(conn) = core.redis.pubsub() {
        conn.send(&[b"UNSUBSCRIBE", &core.settings.key_of(name)]);
    }
}

fn on_push(core: &Core, incoming: Incoming) {
    let push = match incoming {
        Incoming::Push(push) => push,
        Incoming::StrayError(text) => {
            // Redis refused a SUBSCRIBE (ACL, most likely). It does not say which
            // one, so every subscription still being set up fails; live ones
            // are untouched.
            tracing::warn!(error = %text, "redis refused a pub/sub command");
            let starting = core.hub.borrow().channels_of(Source::Pubsub, false);
            for name in starting {
                core.hub.borrow_mut().fail(&name);
                // No confirmation will come for the refused one; any other was
                // dropped here, so Redis must not keep it subscribed either.
                core.redis.unconfirmed.borrow_mut().remove(&name);
                core.redis.refusals.borrow_mut().insert(name.clone(), text.clone());
                unsubscribe(core, &name);
            }
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
            let mut unconfirmed = core.redis.unconfirmed.borrow_mut();
            let confirmed = match unconfirmed.get_mut(name) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    unconfirmed.remove(name);
                    true
                }
                None => true,
            };
            drop(unconfirmed);
            if confirmed {
                core.hub.borrow_mut().set_live(name, StreamId::ZERO);
            }
        }
        Push::Unsubscribed { .. } | Push::Other => {}
    }
}
