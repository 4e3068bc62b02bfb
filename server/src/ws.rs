//! A WebSocket connection's reader: frames cut out of the core's read buffer
//! (`ws_decode`), judged by `Inbound`, and ops handled one at a time, in order,
//! so replies keep the order of requests.

use std::future::Future;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use feedgate_core::envelope;
use feedgate_core::inbound::{Action, Inbound};
use feedgate_core::op::{self, Op};
use feedgate_core::rate::{OpRate, Verdict};
use feedgate_core::ws_decode::{self, Decoded};
use feedgate_core::ErrorCode;
use monoio::io::{OwnedReadHalf, Splitable};
use monoio::net::TcpStream;
use std::os::fd::AsRawFd;

use crate::admission::Ticket;
use crate::conn::{close_code, run_writer, Conn};
use crate::core::Core;
use crate::reader::recv_ready;
use crate::subscribe;

/// Bytes read (and discarded) after the server decided to close: enough for
/// the client's close frame and what it had in flight, not a flood. Reading
/// on without a bound cost a core 1.5 GiB of reads in 3 s after a 4008.
const CLOSING_READ_LIMIT: usize = 64 * 1024;

/// Serves an upgraded connection until it closes. `leftover` holds bytes that
/// arrived after the HTTP request head; `ticket` counts it against the
/// connection limits while it lives.
///
/// Not an `async fn`: the setup runs before the task is spawned, so the
/// task's state machine holds neither the stream nor the setup's locals for
/// the connection's whole life (an `async fn` keeps room for its arguments).
pub fn serve(core: Rc<Core>, stream: TcpStream, leftover: BytesMut, ticket: Ticket) -> impl Future<Output = ()> {
    let conn = Rc::new(Conn::new(
        core.next_conn_id(),
        stream.as_raw_fd(),
        &core.settings.limits,
    ));
    core.conns.borrow_mut().insert(conn.id, conn.clone());
    tracing::debug!(conn = conn.id, "websocket open");
    let (rd, wr) = stream.into_split();
    monoio::spawn(run_writer(conn.clone(), wr));
    // A refused connection stops counting at once: it is on its way out, and
    // counting it through its close handshake would refuse the next client too.
    let refused = ticket.over_limit();
    let ticket = (!refused).then_some(ticket);
    if refused {
        //= shared/PROTOCOL.md section 3
        //# 1013 | try again later: the server is at its connection limit
        conn.close(close_code::TRY_AGAIN_LATER, "server at its connection limit");
    } else if core.shutdown.is_set() {
        // The upgrade completed during the drain: it is closed like the rest.
        conn.close(close_code::GOING_AWAY, "server shutting down");
    }
    run(core, conn, rd, leftover, ticket)
}

/// Reads the connection until it is over, then takes it off the core.
async fn run(core: Rc<Core>, conn: Rc<Conn>, rd: OwnedReadHalf<TcpStream>, leftover: BytesMut, ticket: Option<Ticket>) {
    // SAFETY: the read half and the writer's write half share one stream in an
    // `UnsafeCell`, as monoio's own split does; the stream is only read here
    // (a readiness poll and the fd), and the writer only copies its fd into
    // write ops, so nothing is ever mutated through either side.
    let stream: &TcpStream = unsafe { &*rd.0.get() };
    if conn.is_open() {
        read_ops(&core, &conn, stream, leftover).await;
    }
    // Read (and discard) a little until the client closes or the writer's
    // linger ends the socket: closing with unread bytes would send a RST that
    // can destroy our close frame before the client reads it.
    let mut discarded = 0;
    while !conn.is_gone() && discarded < CLOSING_READ_LIMIT {
        match recv_ready(stream, &core.scratch).await {
            Ok(n) if n > 0 => discarded += n,
            _ => {
                // The client is done: the writer need not linger.
                conn.gone();
                break;
            }
        }
    }
    // Past the read limit the writer's linger (or the keepalive, for a client
    // that stopped reading) ends the socket.
    conn.writer_done().await;
    conn.gone();
    let channels: Vec<Rc<str>> = conn.subs.borrow().iter().cloned().collect();
    for channel in channels {
        subscribe::leave(&core, &conn, &channel);
    }
    core.conns.borrow_mut().remove(&conn.id);
    core.counts.borrow_mut().add(conn.take_counts());
    drop(ticket);
    drop(rd);
    tracing::debug!(conn = conn.id, "websocket closed");
}

/// What handling the whole frames of a buffer came to.
enum Next {
    /// Every whole frame is handled; what is left is the start of one.
    More,
    /// A message to handle as an op (an await) before the frames after it.
    Message(Vec<u8>),
    /// The connection is closing or gone: read no further.
    Stop,
}

/// Reads frames and handles ops, in order, until the connection starts closing.
///
/// Frames are cut out of the core's read buffer; a connection keeps bytes of
/// its own (`pending`) only for a frame that has not fully arrived, or for
/// frames that came behind an op still running, and frees them once used.
async fn read_ops(core: &Rc<Core>, conn: &Rc<Conn>, stream: &TcpStream, mut pending: BytesMut) {
    let max = core.settings.limits.max_message_bytes;
    let limits = &core.settings.limits;
    let mut inbound = Inbound::new(max);
    let mut rate = OpRate::new(limits.max_ops_per_sec, limits.op_burst, Instant::now());
    while conn.is_open() {
        let mut next = Next::More;
        if !pending.is_empty() {
            let used;
            (used, next) = take_frames(conn, &mut inbound, &mut pending, max);
            pending.advance(used);
        }
        if let Next::More = next {
            trim(&mut pending);
            let n = match recv_ready(stream, &core.scratch).await {
                Ok(n) if n > 0 => n,
                _ => return conn.gone(),
            };
            let mut scratch = core.scratch.borrow_mut();
            let received = &mut scratch[..n];
            if !pending.is_empty() {
                pending.extend_from_slice(received);
                continue;
            }
            let used;
            (used, next) = take_frames(conn, &mut inbound, received, max);
            // Bytes past what was handled are this connection's to keep: the
            // buffer is the next reader's once this one awaits.
            pending.extend_from_slice(&received[used..]);
        }
        match next {
            Next::More => {}
            Next::Stop => return,
            Next::Message(text) => match rate.check(Instant::now()) {
                Verdict::Allowed => {
                    conn.set_busy(true);
                    // Boxed: a subscribe's state machine is large and lives
                    // only while the op runs, not in every idle connection.
                    Box::pin(handle(core, conn, text)).await;
                    conn.set_busy(false);
                }
                Verdict::Refused => {
                    let message = format!(
                        "more than {} ops per second (burst {}); slow down",
                        limits.max_ops_per_sec, limits.op_burst
                    );
                    conn.send_json(&envelope::error(ErrorCode::RateLimited, &message, op::req_of(text)));
                }
                Verdict::Exceeded => conn.close(close_code::POLICY_VIOLATION, "op rate limit exceeded"),
            },
        }
    }
}

/// Slack a connection's `pending` may keep past twice its bytes before it is
/// copied into a buffer of its size.
const PENDING_SLACK: usize = 4096;

/// Frees `pending` when it is empty and shrinks it when a large receive left
/// a small partial frame in it, before the connection waits for more bytes.
/// Growth by doubling never trips the shrink, so a frame trickling in byte by
/// byte is not copied once per byte.
fn trim(pending: &mut BytesMut) {
    if pending.is_empty() {
        *pending = BytesMut::new();
    } else if pending.capacity() > 2 * pending.len() + PENDING_SLACK {
        *pending = BytesMut::from(&pending[..]);
    }
}

/// Handles the whole frames at the front of `buf` until one completes a
/// message (handling it awaits) or the connection stops reading; returns the
/// bytes used. Control frames are answered here, without an await.
fn take_frames(conn: &Conn, inbound: &mut Inbound, buf: &mut [u8], max: usize) -> (usize, Next) {
    let mut used = 0;
    loop {
        let (frame, len) = match ws_decode::decode(&mut buf[used..], max) {
            Ok(Decoded::Incomplete) => return (used, Next::More),
            Ok(Decoded::Frame { frame, len }) => (frame, len),
            Err(e) => {
                tracing::debug!(conn = conn.id, error = %e, "client broke the protocol");
                conn.close(e.close_code(), e.reason());
                return (used, Next::Stop);
            }
        };
        used += len;
        conn.saw_client();
        if !conn.is_open() {
            return (used, Next::Stop);
        }
        match inbound.on_frame(frame) {
            Action::Message(text) => return (used, Next::Message(text)),
            Action::Pong(payload) => conn.send_pong(payload),
            Action::Echo { code } => conn.close(code, ""),
            Action::Fail { code, reason } => {
                tracing::debug!(conn = conn.id, code, reason, "client broke the protocol");
                conn.close(code, reason);
            }
            Action::None => {}
        }
        if !conn.is_open() {
            return (used, Next::Stop);
        }
    }
}

/// Handles one client op.
async fn handle(core: &Rc<Core>, conn: &Rc<Conn>, mut text: Vec<u8>) {
    let request = match op::parse(&mut text) {
        Ok(request) => request,
        Err(e) => {
            conn.send_json(&envelope::error(e.error.code, &e.error.message, e.req));
            return;
        }
    };
    let req = request.req;
    match request.op {
        Op::Subscribe {
            channel,
            start,
            min_interval,
        } => subscribe::subscribe(core, conn, req, &channel, start, min_interval).await,
        Op::Unsubscribe { channel } => subscribe::unsubscribe(core, conn, req, &channel),
        Op::Ping => conn.send_json(&envelope::pong(req)),
        // Auth is off until JWT support lands: every client may do everything.
        Op::Auth { .. } => conn.send_json(&envelope::authed(req)),
        Op::Publish { .. } => conn.send_json(&envelope::error(
            ErrorCode::PublishDisabled,
            "publishing from clients is not enabled on this server",
            req,
        )),
    }
}
