//! One core: its pinned thread's shared state (hub, Redis links, connections).
//!
//! Everything here is `Rc`/`RefCell`: it lives on one thread, so the hot path
//! takes no lock and touches no atomic (DESIGN.md, share nothing).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use feedgate_core::frame::FrameBuilder;
use feedgate_core::queue::Counts;

use crate::admission::Admission;
use crate::conn::Conn;
use crate::hub::Hub;
use crate::notify::{Event, Slots};
use crate::reader::Scratch;
use crate::redis::Links;
use crate::settings::Settings;

/// Connection ids carry the core index in their low part: `serial * ID_STRIDE + core`.
const ID_STRIDE: u64 = 1024;

/// The per-core serial number of connection id `id`.
pub fn conn_serial(id: u64) -> u64 {
    id / ID_STRIDE
}

/// Whether each core's Redis links are up, for `/readyz` on any core.
pub struct Readiness {
    cores: Vec<AtomicBool>,
}

impl Readiness {
    /// All cores start not ready.
    pub fn new(cores: usize) -> Self {
        Self {
            cores: (0..cores).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Whether every core is ready.
    pub fn all_ready(&self) -> bool {
        self.cores.iter().all(|c| c.load(Ordering::Relaxed))
    }

    fn set(&self, core: usize, ready: bool) {
        self.cores[core].store(ready, Ordering::Relaxed);
    }
}

/// The state of one core.
pub struct Core {
    pub index: usize,
    pub settings: Arc<Settings>,
    pub hub: RefCell<Hub>,
    pub frames: RefCell<FrameBuilder>,
    pub redis: Links,
    pub conns: RefCell<HashMap<u64, Rc<Conn>>>,
    /// Sockets still sending their HTTP request head, by descriptor, with
    /// their deadline. Not by connection id: a WebSocket connection takes its
    /// id in `ws::serve`, and a second one drawn here made every WebSocket's
    /// serial even, so the keepalive pinged only every other slot, each with
    /// twice its share.
    pub pending_heads: RefCell<HashMap<RawFd, Instant>>,
    next_conn: Cell<u64>,
    readiness: Arc<Readiness>,
    /// Connection limits, shared by every core.
    pub admission: Arc<Admission>,
    /// Replays running at once on this core (`limits.max_replays_per_core`).
    pub replays: Slots,
    /// What the slow-consumer policies and `max_rate` did on this core, for
    /// `/metrics`: folded in from each connection by the keepalive.
    pub counts: RefCell<Counts>,
    /// The buffer every WebSocket client of this core is read into.
    pub scratch: Scratch,
    pub shutdown: Event,
}

impl Core {
    /// A core with no connections and no Redis links yet.
    pub fn new(index: usize, settings: Arc<Settings>, readiness: Arc<Readiness>, admission: Arc<Admission>) -> Self {
        Self {
            index,
            replays: Slots::new(settings.limits.max_replays_per_core),
            counts: RefCell::new(Counts::default()),
            settings,
            hub: RefCell::new(Hub::default()),
            frames: RefCell::new(FrameBuilder::new()),
            redis: Links::default(),
            conns: RefCell::new(HashMap::new()),
            pending_heads: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
            readiness,
            admission,
            scratch: Scratch::default(),
            shutdown: Event::default(),
        }
    }

    /// A connection id unique across cores (the core index in the low bits):
    /// one per WebSocket connection, drawn by `ws::serve` alone, so that
    /// serials run 1, 2, 3... and fill the keepalive's ping slots evenly.
    pub fn next_conn_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        n * ID_STRIDE + self.index as u64
    }

    /// Publishes this core's link state for `/readyz`.
    pub fn update_readiness(&self) {
        self.readiness.set(self.index, self.redis.is_ready());
    }

    /// Whether every core's Redis links are up.
    pub fn all_ready(&self) -> bool {
        self.readiness.all_ready()
    }
}
