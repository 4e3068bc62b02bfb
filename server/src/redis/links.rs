//! A core's Redis links and the supervisors that keep them up, reconnecting
//! with backoff when Redis goes away.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use crate::core::Core;
use crate::redis::conn::RespConn;
use crate::redis::{pubsub, streams};

/// Connections in a core's command pool (replays, positions, unblocks).
const POOL_SIZE: usize = 2;

/// A core's Redis links.
#[derive(Default)]
pub struct Links {
    pool: RefCell<Vec<Rc<RespConn>>>,
    next: Cell<usize>,
    pub(super) pubsub: RefCell<Option<Rc<RespConn>>>,
    /// `CLIENT ID` of the stream reader's connection while it is up.
    pub(super) reader_id: Cell<Option<i64>>,
    /// Bumped whenever the set of live stream channels changes.
    pub(super) streams_gen: Cell<u64>,
    /// The generation the reader's in-flight XREAD was built from.
    pub(super) reader_gen: Cell<u64>,
    pub(super) streams_changed: crate::notify::Notify,
    /// SUBSCRIBEs sent per channel and not confirmed yet.
    pub(super) unconfirmed: RefCell<HashMap<Rc<str>, u32>>,
    /// Why Redis refused the last SUBSCRIBE of a channel, until it is tried again.
    pub refusals: RefCell<HashMap<Rc<str>, String>>,
}

impl Links {
    /// A pool connection that is up, round-robin.
    pub fn pool(&self) -> Option<Rc<RespConn>> {
        let pool = self.pool.borrow();
        if pool.is_empty() {
            return None;
        }
        let n = self.next.get().wrapping_add(1);
        self.next.set(n);
        Some(pool[n % pool.len()].clone())
    }

    /// The pub/sub connection, when up.
    pub fn pubsub(&self) -> Option<Rc<RespConn>> {
        self.pubsub.borrow().clone()
    }

    /// Whether every link is up.
    pub fn is_ready(&self) -> bool {
        !self.pool.borrow().is_empty() && self.pubsub.borrow().is_some() && self.reader_id.get().is_some()
    }
}

/// Doubling delay between reconnect attempts, 50 ms up to 2 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Self(Duration::from_millis(50))
    }

    pub(super) fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }

    pub(super) async fn wait(&mut self) {
        monoio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
}

/// Starts the core's link supervisors.
pub fn start(core: &Rc<Core>) {
    for _ in 0..POOL_SIZE {
        monoio::spawn(supervise_pool(core.clone()));
    }
    monoio::spawn(pubsub::supervise(core.clone()));
    monoio::spawn(streams::run_reader(core.clone()));
}

async fn supervise_pool(core: Rc<Core>) {
    let mut backoff = Backoff::new();
    while !core.shutdown.is_set() {
        let settings = &core.settings;
        match RespConn::connect(settings.redis_addr, &settings.redis, None).await {
            Ok(conn) => {
                backoff.reset();
                core.redis.pool.borrow_mut().push(conn.clone());
                core.update_readiness();
                conn.closed().await;
                core.redis.pool.borrow_mut().retain(|c| !Rc::ptr_eq(c, &conn));
                core.update_readiness();
                tracing::warn!("redis command connection lost; reconnecting");
            }
            Err(e) => tracing::debug!(error = %e, "redis command connection failed"),
        }
        backoff.wait().await;
    }
}
