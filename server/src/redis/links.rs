//! A core's Redis links: a command pool, a pub/sub connection and a stream
//! reader, each kept up by the supervisor, and whether all of them are up.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use feedgate_core::retention::Tally;

use crate::core::Core;
use crate::redis::conn::RespConn;
use crate::redis::{pubsub, streams, supervisor};

/// Connections in a core's command pool (replays, positions, unblocks).
const POOL_SIZE: usize = 2;

/// One of a core's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    Pool(usize),
    Pubsub,
    Reader,
}

impl Link {
    fn index(self) -> usize {
        match self {
            Link::Pool(i) => i,
            Link::Pubsub => POOL_SIZE,
            Link::Reader => POOL_SIZE + 1,
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Link::Pool(i) => write!(f, "command pool {i}"),
            Link::Pubsub => f.write_str("pub/sub"),
            Link::Reader => f.write_str("stream reader"),
        }
    }
}

/// A core's Redis links.
#[derive(Default)]
pub struct Links {
    pool: RefCell<Vec<Rc<RespConn>>>,
    next: Cell<usize>,
    /// Which links are up (connected and answering within their bound).
    up: [Cell<bool>; POOL_SIZE + 2],
    pub(super) pubsub: RefCell<Option<Rc<RespConn>>>,
    /// `CLIENT ID` of the stream reader's connection while it is up.
    pub(super) reader_id: Cell<Option<i64>>,
    /// Bumped whenever the set of live stream channels changes.
    pub(super) streams_gen: Cell<u64>,
    /// The generation the reader's in-flight XREAD was built from.
    pub(super) reader_gen: Cell<u64>,
    pub(super) streams_changed: crate::notify::Notify,
    /// SUBSCRIBEs sent per channel and not answered yet (cleared with the link).
    pub(super) unconfirmed: RefCell<HashMap<Rc<str>, u32>>,
    /// Why Redis refused the SUBSCRIBE of a channel being set up; taken by the
    /// subscribe that waits for it.
    pub refusals: RefCell<HashMap<Rc<str>, String>>,
    /// Per live stream channel, how many entries its stream was ever given up
    /// to the cursor: set when the channel goes live, kept by the stream
    /// reader (across reconnects), and what sizes a gap when retention
    /// overtakes the reader.
    pub tallies: RefCell<HashMap<Rc<str>, Tally>>,
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

    /// Whether every link is up. A link that stops answering is taken down by
    /// its watchdog within its bound, so "up" means "answered lately".
    pub fn is_ready(&self) -> bool {
        self.up.iter().all(Cell::get)
    }

    pub(super) fn set_up(&self, link: Link, up: bool) {
        self.up[link.index()].set(up);
    }
}

/// Starts the core's link supervisors.
pub fn start(core: &Rc<Core>) {
    for i in 0..POOL_SIZE {
        let c = core.clone();
        monoio::spawn(supervisor::supervise(core.clone(), Link::Pool(i), plain, move |conn| {
            pool_session(c.clone(), conn)
        }));
    }
    monoio::spawn(pubsub::run(core.clone()));
    monoio::spawn(streams::run(core.clone()));
}

/// Options of a connection that takes no pushes: pinged when idle, down after
/// [`LINK_BOUND`] without an answer.
pub(super) fn plain() -> crate::redis::conn::ConnOptions {
    crate::redis::conn::ConnOptions {
        on_push: None,
        stall_after: LINK_BOUND,
        ping: true,
    }
}

/// How long a pool or pub/sub connection may leave a command unanswered, with
/// no byte heard, before it is replaced: `/readyz` turns 503 within this plus
/// [`crate::redis::conn::PING_AFTER`] and the watchdog's tick.
pub(super) const LINK_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

async fn pool_session(core: Rc<Core>, conn: Rc<RespConn>) {
    core.redis.pool.borrow_mut().push(conn.clone());
    conn.closed().await;
    core.redis.pool.borrow_mut().retain(|c| !Rc::ptr_eq(c, &conn));
}
