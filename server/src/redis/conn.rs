//! One RESP3 connection to Redis, spoken directly on a monoio socket.
//!
//! Commands are pipelined: `call` encodes the command and registers what
//! answers it in the same synchronous step, so answers match commands in FIFO
//! order whatever order the callers' futures are polled in (shared/TRAPS.md).
//! Pushes (pub/sub messages) go to a handler instead.
//!
//! A watchdog task takes the connection down when Redis stops answering: the
//! oldest unanswered command has waited longer than the connection's bound and
//! no byte came meanwhile. Connections that ask for it are pinged when idle, so
//! an idle link is checked too.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use feedgate_core::config::RedisUrl;
use feedgate_core::resp::{self, Decoder, Push, Reply, ReplyError};
use futures_channel::oneshot;
use monoio::io::{AsyncWriteRentExt, Splitable};

use crate::conn::shutdown;
use crate::notify::{Event, Notify};
use crate::reader::read_more;
use crate::redis::dial::{dial, DialError};

/// Why a Redis call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The connection is down (or went down before the reply came).
    #[error("redis connection is down")]
    Down,
    /// Redis answered with an error, or with a reply of the wrong shape.
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// Connecting failed.
    #[error("cannot connect to redis: {0}")]
    Connect(String),
}

impl From<DialError> for LinkError {
    fn from(e: DialError) -> Self {
        LinkError::Connect(e.to_string())
    }
}

/// Something Redis sent that answers no command with a reply slot.
pub enum Incoming {
    /// A push: a pub/sub message or confirmation.
    Push(Push),
    /// Redis refused a SUBSCRIBE or UNSUBSCRIBE (ACL, most likely); on a
    /// subscribed connection it answers with a plain error (shared/TRAPS.md).
    Refused { channel: Bytes, text: String },
    /// An error reply with no command waiting for it.
    StrayError(String),
}

/// What to do with what Redis sends unprompted.
pub type PushHandler = Box<dyn Fn(Incoming)>;

/// How one connection is watched.
pub struct ConnOptions {
    /// Where pushes go; `None` for a connection that never subscribes.
    pub on_push: Option<PushHandler>,
    /// The oldest unanswered command may wait this long with no byte from
    /// Redis before the connection is taken down.
    pub stall_after: Duration,
    /// Whether to send `PING` when the connection has been quiet for
    /// [`PING_AFTER`], so an idle connection is checked too.
    pub ping: bool,
}

/// How long connecting (resolve and TCP) may take, and then HELLO and SELECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Quiet time after which an idle connection that asks for it is pinged.
pub const PING_AFTER: Duration = Duration::from_secs(1);
/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_millis(250);

type Slot = oneshot::Sender<Reply>;

/// What answers one command, in the order the commands were sent.
enum Expect {
    /// A reply, for the caller waiting on the slot (a dropped receiver means
    /// the caller gave up: the reply is read and discarded).
    Reply(Slot),
    /// SUBSCRIBE or UNSUBSCRIBE of one channel: under RESP3 answered by a push
    /// confirming it, or by an error reply.
    Ack { channel: Bytes, subscribe: bool },
}

struct Pending {
    expect: Expect,
    sent_at: Instant,
}

/// A pipelined RESP3 connection.
pub struct RespConn {
    out: RefCell<BytesMut>,
    wake: Notify,
    pending: RefCell<VecDeque<Pending>>,
    alive: Cell<bool>,
    dead: Event,
    fd: RawFd,
    /// When the last byte came from Redis.
    heard: Cell<Instant>,
}

impl RespConn {
    /// Connects (resolving the host name now), says `HELLO 3` (with
    /// credentials when the URL has them) and selects the URL's database.
    pub async fn connect(url: &RedisUrl, options: ConnOptions) -> Result<Rc<Self>, LinkError> {
        let stream = dial(url, CONNECT_TIMEOUT).await?;
        let fd = stream.as_raw_fd();
        let (rd, wr) = stream.into_split();
        let conn = Rc::new(Self {
            out: RefCell::new(BytesMut::with_capacity(4096)),
            wake: Notify::default(),
            pending: RefCell::new(VecDeque::new()),
            alive: Cell::new(true),
            dead: Event::default(),
            fd,
            heard: Cell::new(Instant::now()),
        });
        monoio::spawn(run_writer(conn.clone(), wr));
        monoio::spawn(run_reader(conn.clone(), rd, options.on_push));
        monoio::spawn(watch(conn.clone(), options.stall_after, options.ping));

        let user = url.username.as_deref().unwrap_or("default");
        let hello = match &url.password {
            Some(pass) => conn.call(&[b"HELLO", b"3", b"AUTH", user.as_bytes(), pass.as_bytes()]),
            None => conn.call(&[b"HELLO", b"3"]),
        };
        let setup = async {
            resp::expect_ok(&hello.await?)?;
            if url.db != 0 {
                let db = url.db.to_string();
                resp::expect_ok(&conn.call(&[b"SELECT", db.as_bytes()]).await?)?;
            }
            Ok(())
        };
        // HELLO and SELECT answer at once from a healthy Redis. Dropping the
        // setup on timeout drops only reply receivers, no I/O.
        let target = crate::redis::dial::target_of(url);
        let setup = async {
            monoio::time::timeout(CONNECT_TIMEOUT, setup)
                .await
                .unwrap_or_else(|_| Err(LinkError::Connect(format!("{target}: no answer to HELLO"))))
        };
        match setup.await {
            Ok(()) => Ok(conn),
            Err(e) => {
                conn.kill();
                Err(e)
            }
        }
    }

    /// Sends a command; the returned future resolves to its reply. The slot is
    /// registered now, not when the future is first polled.
    pub fn call(&self, args: &[&[u8]]) -> impl Future<Output = Result<Reply, LinkError>> + 'static {
        let rx = self.alive.get().then(|| {
            let (tx, rx) = oneshot::channel();
            self.enqueue(args, Expect::Reply(tx));
            rx
        });
        async move {
            match rx {
                Some(rx) => rx.await.map_err(|_| LinkError::Down),
                None => Err(LinkError::Down),
            }
        }
    }

    /// Sends SUBSCRIBE (`subscribe`) or UNSUBSCRIBE for one channel, whose
    /// answer comes to the push handler. False when the link is down.
    pub fn send_ack(&self, channel: &[u8], subscribe: bool) -> bool {
        if !self.alive.get() {
            return false;
        }
        let command: &[u8] = if subscribe { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
        let expect = Expect::Ack {
            channel: Bytes::copy_from_slice(channel),
            subscribe,
        };
        self.enqueue(&[command, channel], expect);
        true
    }

    fn enqueue(&self, args: &[&[u8]], expect: Expect) {
        resp::encode_command(&mut self.out.borrow_mut(), args);
        self.pending.borrow_mut().push_back(Pending {
            expect,
            sent_at: Instant::now(),
        });
        self.wake.notify();
    }

    /// Whether the connection is up.
    pub fn is_alive(&self) -> bool {
        self.alive.get()
    }

    /// Waits until the connection is down.
    pub async fn closed(&self) {
        self.dead.wait().await
    }

    /// Takes the connection down: pending calls fail with [`LinkError::Down`]
    /// at once, and the socket is shut down so its reader and writer end.
    pub fn kill(&self) {
        if self.alive.replace(false) {
            self.pending.borrow_mut().clear();
            shutdown(self.fd, libc::SHUT_RDWR);
            self.wake.notify();
            self.dead.set();
        }
    }

    /// Since when the connection has waited for Redis with nothing heard:
    /// `None` when nothing is pending.
    fn waiting_since(&self) -> Option<Instant> {
        let pending = self.pending.borrow();
        let oldest = pending.front()?.sent_at;
        Some(oldest.max(self.heard.get()))
    }
}

async fn run_writer(conn: Rc<RespConn>, mut wr: impl AsyncWriteRentExt) {
    while conn.is_alive() {
        let chunk = conn.out.borrow_mut().split().freeze();
        if chunk.is_empty() {
            conn.wake.wait().await;
            continue;
        }
        let (result, _) = wr.write_all(chunk).await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "redis write failed");
            conn.kill();
        }
    }
}

async fn run_reader(conn: Rc<RespConn>, mut rd: impl monoio::io::AsyncReadRent, on_push: Option<PushHandler>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut decoder = Decoder::new();
    'read: while conn.is_alive() {
        let (result, back) = read_more(&mut rd, buf, 16 * 1024).await;
        buf = back;
        match result {
            Ok(0) => break,
            Ok(_) => conn.heard.set(Instant::now()),
            Err(e) => {
                tracing::warn!(error = %e, "redis read failed");
                break;
            }
        }
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "redis sent bytes that are not RESP3; dropping the link");
                    break 'read;
                }
            };
            route(&conn, frame, on_push.as_ref());
        }
    }
    conn.kill();
}

/// Hands one frame to what is waiting for it.
fn route(conn: &RespConn, frame: Reply, on_push: Option<&PushHandler>) {
    if let Some(push) = resp::push(&frame) {
        let acked = match &push {
            Push::Subscribed { .. } => Some(true),
            Push::Unsubscribed { .. } => Some(false),
            _ => None,
        };
        if let Some(kind) = acked {
            let mut pending = conn.pending.borrow_mut();
            if matches!(pending.front(), Some(Pending { expect: Expect::Ack { subscribe, .. }, .. }) if *subscribe == kind)
            {
                pending.pop_front();
            }
        }
        if let Some(handler) = on_push {
            handler(Incoming::Push(push));
        }
        return;
    }
    let next = conn.pending.borrow_mut().pop_front();
    match next.map(|p| p.expect) {
        Some(Expect::Reply(tx)) => drop(tx.send(frame)),
        Some(Expect::Ack { channel, .. }) => {
            let text = resp::error_text(&frame).unwrap_or_else(|| "unexpected reply".into());
            if let Some(handler) = on_push {
                handler(Incoming::Refused { channel, text });
            }
        }
        None => match (resp::error_text(&frame), on_push) {
            (Some(text), Some(handler)) => handler(Incoming::StrayError(text)),
            (Some(text), None) => tracing::warn!(error = %text, "redis error without a pending command"),
            _ => {}
        },
    }
}

/// Takes `conn` down when Redis leaves a command unanswered for `stall_after`
/// with no byte heard meanwhile; pings it when quiet, if `ping`. Runs beside
/// the reader rather than racing its read against a timer (a cancelled
/// io_uring read loses its bytes, shared/TRAPS.md).
async fn watch(conn: Rc<RespConn>, stall_after: Duration, ping: bool) {
    while conn.is_alive() {
        monoio::time::sleep(WATCH_EVERY).await;
        let now = Instant::now();
        match conn.waiting_since() {
            Some(since) if now.saturating_duration_since(since) > stall_after => {
                tracing::warn!(?stall_after, "redis stopped answering; dropping the link");
                conn.kill();
            }
            Some(_) => {}
            None if ping && now.saturating_duration_since(conn.heard.get()) >= PING_AFTER => {
                //= https://redis.io/docs/latest/commands/ping/
                //# If the client is subscribed to a channel or a pattern, it will instead
                //# return a multi-bulk with a "pong" in the first position
                // ...under RESP2; under RESP3 it is a plain `+PONG` reply, so
                // it takes a reply slot on the pub/sub connection too.
                drop(conn.call(&[b"PING"]));
            }
            None => {}
        }
    }
}
