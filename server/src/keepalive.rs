//! The core's keepalive: one task pings every connection each interval and
//! closes those that stopped answering, so writers need no timer of their own.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::conn::shutdown;
use crate::core::{conn_serial, Core};

/// How often the keepalive looks at every connection.
const TICK: Duration = Duration::from_millis(100);

/// Pings the core's connections every `ping_interval_ms`, and ends closing
/// connections once their linger is over, for as long as the core runs.
///
/// Pings are spread over the interval: each tick pings only the connections of
/// one slot. Pinging 10,000 connections at once costs 10,000 writes and reads
/// in one burst, which stalled deliveries by ~300 ms in
/// results/compare-2026-11-27.md's 10k scenario.
pub async fn run(core: Rc<Core>) {
    let limits = core.settings.limits;
    let every = Duration::from_millis(limits.ping_interval_ms);
    let silence_limit = every + Duration::from_millis(limits.pong_timeout_ms);
    let tick = every.min(TICK);
    let slots = (every.as_millis() / tick.as_millis()).max(1) as u64;
    let mut slot = 0u64;
    // Runs through the shutdown drain too: it ends closing connections whose
    // clients are done, so the drain lasts no longer than they need. The task
    // ends with the core's runtime.
    loop {
        monoio::time::sleep(tick).await;
        let now = Instant::now();
        slot = (slot + 1) % slots;
        core.pending_heads.borrow_mut().retain(|&fd, deadline| {
            if now < *deadline {
                return true;
            }
            // Too slow to send its request head: the pending read ends with EOF.
            shutdown(fd, libc::SHUT_RDWR);
            false
        });
        // `keepalive` never touches the map, so it is walked in place.
        let mut counts = core.counts.borrow_mut();
        for conn in core.conns.borrow().values() {
            conn.keepalive(now, silence_limit, conn_serial(conn.id) % slots == slot);
            counts.add(conn.take_counts());
        }
    }
}
