//! The one loop that keeps every Redis link up: connect with backoff, run the
//! link's session on the connection, mark the link up and down for `/readyz`,
//! and connect again when the session ends or the connection drops.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::core::Core;
use crate::redis::conn::{ConnOptions, RespConn};
use crate::redis::links::Link;

/// Doubling delay between reconnect attempts, 50 ms up to 2 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    async fn wait(&mut self) {
        monoio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

/// Keeps `link` up until the core shuts down. Each connection gets fresh
/// `options`; `session` runs while it is up and returns when it is done with
/// it (the connection is then taken down, which fails whatever was pending).
pub(super) async fn supervise<S, F>(core: Rc<Core>, link: Link, options: impl Fn() -> ConnOptions, mut session: S)
where
    S: FnMut(Rc<RespConn>) -> F,
    F: Future<Output = ()>,
{
    let mut backoff = Backoff(Backoff::FIRST);
    while !core.shutdown.is_set() {
        match RespConn::connect(&core.settings.redis, options()).await {
            Ok(conn) => {
                backoff = Backoff(Backoff::FIRST);
                core.redis.set_up(link, true);
                core.update_readiness();
                session(conn.clone()).await;
                conn.kill();
                core.redis.set_up(link, false);
                core.update_readiness();
                tracing::warn!(link = %link, "redis link lost; reconnecting");
            }
            Err(e) => tracing::debug!(link = %link, error = %e, "redis connection failed"),
        }
        backoff.wait().await;
    }
}
