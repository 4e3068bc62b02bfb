//! The core's keepalive: one task pings every connection each interval and
//! closes those that stopped answering, so writers need no timer of their own.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::conn::{shutdown, CLOSE_LINGER};
use crate::core::Core;

/// Pings the core's connections every `ping_interval_ms`, and ends closing
/// connections stuck past their linger, until shutdown.
pub async fn run(core: Rc<Core>) {
    let limits = core.settings.limits;
    let every = Duration::from_millis(limits.ping_interval_ms);
    let silence_limit = every + Duration::from_millis(limits.pong_timeout_ms);
    // Ticks at least every second so closing connections are ended soon after
    // their linger, whatever the ping interval.
    let tick = every.min(CLOSE_LINGER / 2);
    let mut next_ping = Instant::now() + every;
    while !core.shutdown.is_set() {
        monoio::time::sleep(tick).await;
        let now = Instant::now();
        let ping_due = now >= next_ping;
        if ping_due {
            next_ping = now + every;
        }
        core.pending_heads.borrow_mut().retain(|_, (fd, deadline)| {
            if now < *deadline {
                return true;
            }
            // Too slow to send its request head: the pending read ends with EOF.
            shutdown(*fd, libc::SHUT_RDWR);
            false
        });
        let conns: Vec<_> = core.conns.borrow().values().cloned().collect();
        for conn in conns {
            conn.keepalive(now, silence_limit, ping_due);
        }
    }
}
