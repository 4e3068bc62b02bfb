//! The core's keepalive: one task pings every connection each interval and
//! closes those that stopped answering, so writers need no timer of their own.

use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::core::Core;

/// Pings the core's connections every `ping_interval_ms` until shutdown.
pub async fn run(core: Rc<Core>) {
    let limits = core.settings.limits;
    let every = Duration::from_millis(limits.ping_interval_ms);
    let silence_limit = every + Duration::from_millis(limits.pong_timeout_ms);
    while !core.shutdown.is_set() {
        monoio::time::sleep(every).await;
        let now = Instant::now();
        let conns: Vec<_> = core.conns.borrow().values().cloned().collect();
        for conn in conns {
            conn.keepalive(now, silence_limit);
        }
    }
}
