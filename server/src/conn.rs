//! One WebSocket client's shared state and its writer task.
//!
//! The reader (in `ws.rs`) and the hub push frames into the connection's
//! bounded queue; the writer task drains it with one vectored write per batch.
//! The core's keepalive task pings it and ends it when it stops answering.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use feedgate_core::config::Limits;
use feedgate_core::frame;
use feedgate_core::queue::{Counts, Delivery, LaneId, LaneSpec, OutQueue, Pushed};
use monoio::io::AsyncWriteRent;

use crate::notify::{Event, Notify};
use crate::writev::{self, Frames, MAX_IOVECS};

/// How long a closing connection waits for the client's close handshake once
/// the client has read everything sent to it.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// RFC 6455 and PROTOCOL.md close codes the server sends.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// The close reason sent with 4008.
pub const SLOW_CONSUMER_REASON: &str = "slow consumer: outbound queue overflowed";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued or sent; nothing else goes out.
    Closing,
    /// The socket is finished with.
    Gone,
}

/// A client connection, shared by its reader, its writer and the hub.
pub struct Conn {
    pub id: u64,
    fd: RawFd,
    out: RefCell<OutQueue>,
    wake: Notify,
    /// Signalled after each completed write, for replays that wait for room.
    pub drained: Notify,
    state: Cell<State>,
    /// When the closing handshake began: the keepalive ends a connection
    /// whose writer is stuck on a client that stopped reading.
    closing_since: Cell<Option<Instant>>,
    /// When the writer last moved bytes: a slow client that still reads is
    /// given its close frame; one that stopped reading is cut off.
    wrote: Cell<Instant>,
    /// How long a closing connection may go without the writer moving a byte:
    /// the pong timeout, the time any client may stay unresponsive.
    stuck_limit: Duration,
    /// Once the close frame is in the kernel: the bytes the client had not read
    /// yet at the last look, and when that last changed.
    linger: Cell<Option<(usize, Instant)>>,
    busy: Cell<bool>,
    last_seen: Cell<Instant>,
    /// Write coalescing: how long the writer waits after a batch's first
    /// delivery for more (the least `write_delay_us` of the namespaces this
    /// connection subscribes to); zero writes at once.
    write_delay: Cell<Duration>,
    /// When the first delivery not yet written was queued.
    batch_started: Cell<Option<Instant>>,
    /// Something queued must go out without waiting out the delay: a reply, a
    /// control frame, or frames left over from a full batch.
    urgent: Cell<bool>,
    /// Most frames one write carries.
    max_frames: usize,
    /// Channels this connection holds.
    pub subs: RefCell<HashSet<Rc<str>>>,
    /// Set when the writer task has ended (the socket is written no more).
    writer_finished: Event,
}

impl Conn {
    /// A new open connection on socket `fd`.
    pub fn new(id: u64, fd: RawFd, limits: &Limits) -> Self {
        Self {
            id,
            fd,
            out: RefCell::new(OutQueue::new(limits.outbound_queue_bytes)),
            wake: Notify::default(),
            drained: Notify::default(),
            state: Cell::new(State::Open),
            closing_since: Cell::new(None),
            wrote: Cell::new(Instant::now()),
            stuck_limit: Duration::from_millis(limits.pong_timeout_ms).max(CLOSE_LINGER),
            linger: Cell::new(None),
            busy: Cell::new(false),
            last_seen: Cell::new(Instant::now()),
            write_delay: Cell::new(Duration::from_micros(limits.write_delay_us)),
            batch_started: Cell::new(None),
            urgent: Cell::new(false),
            max_frames: limits.max_frames_per_write.clamp(1, MAX_IOVECS),
            subs: RefCell::new(HashSet::new()),
            writer_finished: Event::default(),
        }
    }

    /// Whether frames may still be sent.
    pub fn is_open(&self) -> bool {
        self.state.get() == State::Open
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.out.borrow().bytes()
    }

    /// The outbound queue's limit in bytes.
    pub fn queue_limit(&self) -> usize {
        self.out.borrow().limit()
    }

    /// Records that the client sent something (it is alive).
    pub fn saw_client(&self) {
        self.last_seen.set(Instant::now());
    }

    /// Queues a delivery for the client, written within the write delay. Hot
    /// path: a refcount bump and a queue push; the writer is woken, never awaited.
    pub fn send(&self, frame: Bytes) {
        if self.queue(frame) {
            self.wake_for_delivery();
        }
    }

    /// Queues a reply or control frame, written at once (with whatever
    /// deliveries are queued before it).
    pub fn send_now(&self, frame: Bytes) {
        if self.queue(frame) {
            self.urgent.set(true);
            self.wake.notify();
        }
    }

    /// Pushes `frame` into an open connection's queue; an overflow starts the
    /// close with 4008. Whether the frame was queued.
    fn queue(&self, frame: Bytes) -> bool {
        if self.state.get() != State::Open {
            return false;
        }
        let pushed = self.out.borrow_mut().push(frame);
        if pushed.is_err() {
            self.close(close_code::SLOW_CONSUMER, SLOW_CONSUMER_REASON);
            return false;
        }
        true
    }

    /// Wakes the writer for a queued delivery. With a write delay, only the
    /// batch's first delivery (the writer starts its wait) and the one that
    /// fills it wake the writer: a wake-up per frame is the cost batching saves.
    fn wake_for_delivery(&self) {
        if self.write_delay.get().is_zero() {
            self.wake.notify();
        } else if self.batch_started.get().is_none() {
            let since = DELIVERY_EPOCH.with(Cell::get).unwrap_or_else(Instant::now);
            self.batch_started.set(Some(since));
            self.wake.notify();
        } else if self.out.borrow().len() >= self.max_frames {
            self.wake.notify();
        }
    }

    /// Sets the write delay (a subscription changed which namespaces this
    /// connection reads).
    pub fn set_write_delay(&self, delay: Duration) {
        if delay < self.write_delay.get() {
            // A batch waiting for the old, longer delay is due sooner now.
            self.wake.notify();
        }
        self.write_delay.set(delay);
    }

    /// The current write delay.
    pub fn write_delay(&self) -> Duration {
        self.write_delay.get()
    }

    /// When the writer should write the queued batch, if it should wait at all:
    /// never for a reply, a full batch or a closing connection.
    fn batch_due(&self, now: Instant) -> Option<Instant> {
        let due = self.batch_started.get()? + self.write_delay.get();
        let wait = due > now
            && !self.urgent.get()
            && self.state.get() == State::Open
            && self.out.borrow().len() < self.max_frames;
        wait.then_some(due)
    }

    /// Queues a delivery of a lane (a `drop_oldest`, `conflate` or throttled
    /// subscription) under its policy; `None` when the connection is not open
    /// or the delivery overflowed a `disconnect` lane (the connection closes).
    pub fn send_delivery(&self, lane: LaneId, delivery: Delivery, now: Instant) -> Option<Pushed> {
        if self.state.get() != State::Open {
            return None;
        }
        let pushed = self.out.borrow_mut().push_delivery(lane, delivery, now);
        match pushed {
            Ok(pushed) => {
                self.wake_for_delivery();
                Some(pushed)
            }
            Err(_) => {
                self.close(close_code::SLOW_CONSUMER, SLOW_CONSUMER_REASON);
                None
            }
        }
    }

    /// Releases the throttled lane's next delivery when due; returns when the
    /// one after is due.
    pub fn release_due(&self, lane: LaneId, now: Instant) -> Option<Instant> {
        if self.state.get() != State::Open {
            return None;
        }
        let released = self.out.borrow_mut().release_due(lane, now);
        self.wake_for_delivery();
        released.unwrap_or_else(|_| {
            self.close(close_code::SLOW_CONSUMER, SLOW_CONSUMER_REASON);
            None
        })
    }

    /// Opens a lane of the queue for one subscription.
    pub fn open_lane(&self, spec: LaneSpec) -> LaneId {
        self.out.borrow_mut().open_lane(spec)
    }

    /// Closes a subscription's lane.
    pub fn close_lane(&self, lane: LaneId) {
        self.out.borrow_mut().close_lane(lane);
    }

    /// Records `n` deliveries of the lane lost before it opened (held ones).
    pub fn note_lost(&self, lane: LaneId, n: u64) {
        self.out.borrow_mut().note_lost(lane, n);
    }

    /// What the queue's policies did since the last call.
    pub fn take_counts(&self) -> Counts {
        self.out.borrow_mut().take_counts()
    }

    /// Queues a text frame holding `json`.
    pub fn send_json(&self, json: &[u8]) {
        self.send_now(frame::text(json));
    }

    /// Queues a pong. Bounded like any frame, so a client that floods pings
    /// and never reads hits the slow-consumer limit instead of growing memory.
    pub fn send_pong(&self, payload: &[u8]) {
        self.send_now(frame::pong(payload));
    }

    /// Marks an op as in progress: the reader is not reading meanwhile, so the
    /// client's pongs cannot count and the keepalive must not close it.
    pub fn set_busy(&self, busy: bool) {
        self.busy.set(busy);
        if !busy {
            self.saw_client();
        }
    }

    /// Starts the closing handshake with `code`: queued data is dropped, the close
    /// frame goes out, and the writer then ends the connection.
    pub fn close(&self, code: u16, reason: &str) {
        if self.state.get() != State::Open {
            return;
        }
        tracing::debug!(conn = self.id, code, reason, "closing");
        self.state.set(State::Closing);
        self.closing_since.set(Some(Instant::now()));
        let mut out = self.out.borrow_mut();
        out.clear();
        out.push_unbounded(frame::close(code, reason));
        drop(out);
        self.urgent.set(true);
        self.wake.notify();
    }

    /// The client's socket is finished (EOF or error): stop everything.
    pub fn gone(&self) {
        if self.state.replace(State::Gone) != State::Gone {
            self.out.borrow_mut().clear();
            self.wake.notify();
            self.drained.notify();
        }
    }

    /// Whether the socket is finished with.
    pub fn is_gone(&self) -> bool {
        self.state.get() == State::Gone
    }

    /// Takes every queued frame (unit tests look at what a connection was sent).
    #[cfg(test)]
    pub fn take_queued(&self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        self.out.borrow_mut().drain_into(&mut frames, usize::MAX);
        frames
    }

    /// Waits until the writer task has ended.
    pub async fn writer_done(&self) {
        self.writer_finished.wait().await
    }

    /// Ends both directions of the socket, which makes a pending read return
    /// EOF: how watchdogs stop a reader without cancelling its read
    /// (a cancelled io_uring read can lose bytes, shared/TRAPS.md).
    pub fn shutdown_socket(&self) {
        shutdown(self.fd, libc::SHUT_RDWR);
    }
}

impl Conn {
    /// Ends a closing connection's socket when its client is done or stuck.
    ///
    /// Before the close frame is out, the writer may be blocked on a client that
    /// stopped reading: once it has moved nothing for the pong timeout, the
    /// socket is ended so the write fails and everything is freed. After it, the
    /// client has `CLOSE_LINGER` to answer once it has read everything, and the
    /// pong timeout to make any progress reading.
    fn end_closing(&self, now: Instant, since: Instant) {
        let Some((unsent, changed)) = self.linger.get() else {
            if now.duration_since(since.max(self.wrote.get())) > self.stuck_limit {
                self.cut_off();
            }
            return;
        };
        let left = unsent_bytes(self.fd);
        if left != unsent {
            self.linger.set(Some((left, now)));
            return;
        }
        let quiet = now.duration_since(changed);
        if (left == 0 && quiet >= CLOSE_LINGER) || quiet > self.stuck_limit {
            self.cut_off();
        }
    }

    /// Ends the connection from outside its tasks: the writer's wait and any
    /// pending read or write end at once.
    fn cut_off(&self) {
        self.gone();
        self.shutdown_socket();
    }
}

/// Bytes written to socket `fd` that its peer has not acknowledged yet
/// (`SIOCOUTQ`); 0 when the socket cannot say.
fn unsent_bytes(fd: RawFd) -> usize {
    let mut unsent: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer given.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unsent) };
    if rc == 0 {
        usize::try_from(unsent).unwrap_or(0)
    } else {
        0
    }
}

/// `shutdown(2)` on a socket; errors (already closed) do not matter here.
pub fn shutdown(fd: RawFd, how: libc::c_int) {
    // SAFETY: shutdown on an fd this process owns has no memory effects; a
    // stale or closed fd only yields an error, which is ignored.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Batches written on this core and the frames in them: how well writes are
/// coalesced, logged when the core stops.
#[derive(Default)]
pub struct WriteStats {
    batches: Cell<u64>,
    frames: Cell<u64>,
}

impl WriteStats {
    fn note(&self, frames: usize) {
        self.batches.set(self.batches.get() + 1);
        self.frames.set(self.frames.get() + frames as u64);
    }

    /// (batches, frames) written so far on this core.
    pub fn totals(&self) -> (u64, u64) {
        (self.batches.get(), self.frames.get())
    }
}

thread_local! {
    /// This core's write batches (one thread per core).
    pub static WRITES: WriteStats = WriteStats::default();
    /// While the stream reader fans out a read it delayed (read coalescing),
    /// when its entries can have reached Redis at the earliest: their write
    /// delay counts from then, so the read's wait and the write's add up to
    /// the delay, not twice it.
    static DELIVERY_EPOCH: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `deliver` (a synchronous fan-out) with deliveries' write delay
/// counted from `arrived_after` rather than from now.
pub fn deliveries_arrived_after<T>(arrived_after: Option<Instant>, deliver: impl FnOnce() -> T) -> T {
    DELIVERY_EPOCH.with(|e| e.set(arrived_after));
    let out = deliver();
    DELIVERY_EPOCH.with(|e| e.set(None));
    out
}

/// Drains `conn`'s queue into `sink` until the connection is gone. Hot path:
/// no timer per wake-up (pings come from the core's keepalive task), just a
/// wait on the notify and one vectored write per batch.
pub async fn run_writer<W: AsyncWriteRent>(conn: Rc<Conn>, sink: W) {
    write_until_done(&conn, sink).await;
    conn.writer_finished.set();
}

async fn write_until_done<W: AsyncWriteRent>(conn: &Conn, mut sink: W) {
    let mut frames = Frames::default();
    loop {
        if let Some(due) = conn.batch_due(Instant::now()) {
            // Write coalescing: wait out the delay, unless a wake-up (a reply,
            // a full batch, a close) makes the batch due sooner.
            let wait = monoio::time::sleep(due.saturating_duration_since(Instant::now()));
            monoio::select! {
                _ = wait => {}
                _ = conn.wake.wait() => {}
            }
            continue;
        }
        conn.batch_started.set(None);
        // Under backlog batching grows by itself: what waited during the last
        // write goes in this one, and what did not fit goes in the next at once.
        let left_over = {
            let mut out = conn.out.borrow_mut();
            out.drain_into(frames.bufs_mut(), conn.max_frames);
            !out.is_empty()
        };
        conn.urgent.set(left_over);
        if !frames.bufs_mut().is_empty() {
            WRITES.with(|w| w.note(frames.bufs_mut().len()));
            let (result, back) = writev::write_all(&mut sink, frames, || conn.wrote.set(Instant::now())).await;
            frames = back;
            if result.is_err() {
                frames.bufs_mut().clear();
                conn.gone();
                conn.shutdown_socket();
                return;
            }
            conn.drained.notify();
            continue;
        }
        match conn.state.get() {
            State::Gone => return,
            State::Closing => {
                // The close frame is out: half-close, then wait for the client's
                // answer. The keepalive ends the wait (see `Conn::keepalive`):
                // a fixed linger from here cut off slow clients still reading
                // their backlog, whose pongs then met a closed socket and a RST
                // that threw away the close frame before they read it.
                shutdown(conn.fd, libc::SHUT_WR);
                conn.linger.set(Some((unsent_bytes(conn.fd), Instant::now())));
                while !conn.is_gone() {
                    conn.wake.wait().await;
                }
                conn.shutdown_socket();
                return;
            }
            State::Open => conn.wake.wait().await,
        }
    }
}

impl Conn {
    /// Pings the client, or closes it when it has been silent longer than
    /// `silence_limit` (it stopped answering pings).
    pub fn keepalive(&self, now: Instant, silence_limit: Duration, ping_due: bool) {
        if let Some(since) = self.closing_since.get() {
            if self.state.get() == State::Closing {
                self.end_closing(now, since);
            }
            return;
        }
        if !ping_due || !self.is_open() {
            return;
        }
        if !self.busy.get() && now.duration_since(self.last_seen.get()) >= silence_limit {
            self.close(close_code::NORMAL, "ping timeout");
        } else {
            // Not urgent: a ping may wait out a write delay with the batch it
            // joins (the delay is far below the pong timeout).
            self.out.borrow_mut().push_unbounded(frame::ping(b"fg"));
            self.wake.notify();
        }
    }
}
