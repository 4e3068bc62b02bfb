//! One RESP3 connection to Redis, spoken directly on a monoio socket.
//!
//! Commands are pipelined: `call` encodes the command and registers its reply
//! slot in the same synchronous step, so replies match commands in FIFO order
//! whatever order the callers' futures are polled in (shared/TRAPS.md).
//! Pushes (pub/sub messages) go to a handler instead of a slot.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use feedgate_core::config::RedisUrl;
use feedgate_core::resp::{self, Push, Reply, ReplyError};
use futures_channel::oneshot;
use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use crate::conn::shutdown;
use crate::notify::{Event, Notify};
use crate::reader::read_more;

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

/// Something Redis sent that answers no pending command.
pub enum Incoming {
    /// A push: a pub/sub message or confirmation.
    Push(Push),
    /// An error reply with no command waiting for it: on the pub/sub
    /// connection, a refused SUBSCRIBE (shared/TRAPS.md).
    StrayError(String),
}

/// What to do with what Redis sends unprompted.
pub type PushHandler = Box<dyn Fn(Incoming)>;

/// How long connecting to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Slot = oneshot::Sender<Reply>;

/// A pipelined RESP3 connection.
pub struct RespConn {
    out: RefCell<BytesMut>,
    wake: Notify,
    slots: RefCell<VecDeque<Slot>>,
    alive: Cell<bool>,
    dead: Event,
    fd: RawFd,
}

impl RespConn {
    /// Connects, says `HELLO 3` (with credentials when the URL has them) and
    /// selects the URL's database.
    pub async fn connect(
        addr: SocketAddr,
        url: &RedisUrl,
        on_push: Option<PushHandler>,
    ) -> Result<Rc<Self>, LinkError> {
        let stream = monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect_addr(addr))
            .await
            .map_err(|_| LinkError::Connect(format!("{addr}: timed out")))?
            .map_err(|e| LinkError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let fd = stream.as_raw_fd();
        let (rd, wr) = stream.into_split();
        let conn = Rc::new(Self {
            out: RefCell::new(BytesMut::with_capacity(4096)),
            wake: Notify::default(),
            slots: RefCell::new(VecDeque::new()),
            alive: Cell::new(true),
            dead: Event::default(),
            fd,
        });
        monoio::spawn(run_writer(conn.clone(), wr));
        monoio::spawn(run_reader(conn.clone(), rd, on_push));

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
        // HELLO and SELECT answer at once from a healthy Redis.
        let setup = async {
            monoio::time::timeout(CONNECT_TIMEOUT, setup)
                .await
                .unwrap_or_else(|_| Err(LinkError::Connect(format!("{addr}: no answer to HELLO"))))
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
        let rx = self.enqueue(args, true);
        async move {
            match rx {
                Some(rx) => rx.await.map_err(|_| LinkError::Down),
                None => Err(LinkError::Down),
            }
        }
    }

    /// Sends a command whose answer arrives as a push (SUBSCRIBE, UNSUBSCRIBE
    /// under RESP3), so it takes no reply slot. False when the link is down.
    pub fn send(&self, args: &[&[u8]]) -> bool {
        self.alive.get() && {
            self.enqueue(args, false);
            true
        }
    }

    fn enqueue(&self, args: &[&[u8]], with_slot: bool) -> Option<oneshot::Receiver<Reply>> {
        if !self.alive.get() {
            return None;
        }
        resp::encode_command(&mut self.out.borrow_mut(), args);
        self.wake.notify();
        with_slot.then(|| {
            let (tx, rx) = oneshot::channel();
            self.slots.borrow_mut().push_back(tx);
            rx
        })
    }

    /// Whether the connection is up.
    pub fn is_alive(&self) -> bool {
        self.alive.get()
    }

    /// Waits until the connection is down.
    pub async fn closed(&self) {
        self.dead.wait().await
    }

    /// Takes the connection down: pending calls fail with [`LinkError::Down`].
    pub fn kill(&self) {
        if self.alive.replace(false) {
            self.slots.borrow_mut().clear();
            shutdown(self.fd, libc::SHUT_RDWR);
            self.wake.notify();
            self.dead.set();
        }
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
    'read: while conn.is_alive() {
        let (result, back) = read_more(&mut rd, buf, 16 * 1024).await;
        buf = back;
        match result {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "redis read failed");
                break;
            }
        }
        loop {
            let frame = match resp::decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "redis sent bytes that are not RESP3");
                    break 'read;
                }
            };
            if let Some(push) = resp::push(&frame) {
                if let Some(handler) = &on_push {
                    handler(Incoming::Push(push));
                }
                continue;
            }
            let slot = conn.slots.borrow_mut().pop_front();
            match slot {
                // A dropped receiver means the caller gave up: nothing to do.
                Some(tx) => drop(tx.send(frame)),
                None => match (resp::error_text(&frame), &on_push) {
                    (Some(text), Some(handler)) => handler(Incoming::StrayError(text)),
                    (Some(text), None) => tracing::warn!(error = %text, "redis error without a pending command"),
                    _ => {}
                },
            }
        }
    }
    conn.kill();
}
