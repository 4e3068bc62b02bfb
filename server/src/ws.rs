//! A WebSocket connection's reader: frames in (fastwebsockets), ops parsed and
//! handled one at a time, in order, so replies keep the order of requests.

use std::cell::RefCell;
use std::convert::Infallible;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;
use fastwebsockets::{Frame, Role, WebSocketError};
use feedgate_core::envelope;
use feedgate_core::inbound::{Action, InFrame, Inbound};
use feedgate_core::op::{self, Op};
use feedgate_core::rate::{OpRate, Verdict};
use feedgate_core::ErrorCode;
use monoio::io::{OwnedReadHalf, Splitable};
use monoio::net::TcpStream;

use crate::admission::Ticket;
use crate::conn::{close_code, run_writer, Conn};
use crate::core::Core;
use crate::reader::{read_more, NoWrite, PollReader};
use crate::subscribe;

/// Bytes read (and discarded) after the server decided to close: enough for
/// the client's close frame and what it had in flight, not a flood. Reading
/// on without a bound cost a core 1.5 GiB of reads in 3 s after a 4008.
const CLOSING_READ_LIMIT: usize = 64 * 1024;

/// Serves an upgraded connection until it closes. `leftover` holds bytes that
/// arrived after the HTTP request head; `ticket` counts it against the
/// connection limits while it lives.
pub async fn serve(core: Rc<Core>, stream: TcpStream, leftover: BytesMut, ticket: Ticket) {
    let limits = core.settings.limits;
    let conn = Rc::new(Conn::new(core.next_conn_id(), stream.as_raw_fd(), &limits));
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

    let half = Rc::new(RefCell::new(Some(rd)));
    if conn.is_open() {
        read_ops(&core, &conn, PollReader::new(half.clone(), leftover)).await;
    }
    // Read (and discard) a little until the client closes or the writer's
    // linger ends the socket: closing with unread bytes would send a RST that
    // can destroy our close frame before the client reads it.
    let rd = half.borrow_mut().take();
    if let Some(mut rd) = rd {
        let mut buf = BytesMut::with_capacity(4096);
        let mut discarded = 0;
        while !conn.is_gone() && discarded < CLOSING_READ_LIMIT {
            buf.clear();
            let (result, back) = read_more(&mut rd, buf, 4096).await;
            buf = back;
            match result {
                Ok(n) if n > 0 => discarded += n,
                _ => {
                    // The client is done: the writer need not linger.
                    conn.gone();
                    break;
                }
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
    tracing::debug!(conn = conn.id, "websocket closed");
}

/// Reads frames and handles ops, in order, until the connection starts closing.
async fn read_ops(core: &Rc<Core>, conn: &Rc<Conn>, reader: PollReader<OwnedReadHalf<TcpStream>>) {
    let limits = core.settings.limits;
    let (mut ws, _) = fastwebsockets::after_handshake_split(reader, NoWrite, Role::Server);
    // fastwebsockets refuses frames of `max_message_size` bytes or more (before
    // reading their payload); the limit is inclusive here.
    ws.set_max_message_size(limits.max_message_bytes + 1);
    // Pings and closes are answered by `Inbound`, after the mask check that
    // fastwebsockets' automatic answers skip.
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    let mut inbound = Inbound::new(limits.max_message_bytes);
    let mut rate = OpRate::new(limits.max_ops_per_sec, limits.op_burst, Instant::now());
    let mut no_obligations = |_: Frame<'_>| std::future::ready(Ok::<(), Infallible>(()));
    while conn.is_open() {
        let mut frame = match ws.read_frame(&mut no_obligations).await {
            Ok(frame) => frame,
            Err(e) => return on_read_error(conn, &e),
        };
        conn.saw_client();
        if !conn.is_open() {
            return;
        }
        // fastwebsockets keeps the mask key private but writes it into a
        // formatted header, which is how the mask bit is read here.
        let mut head = [0u8; 14];
        frame.fmt_head(&mut head);
        let Some(in_frame) = InFrame::from_head([head[0], head[1]], &frame.payload) else {
            return conn.close(close_code::PROTOCOL_ERROR, "protocol error");
        };
        let action = inbound.on_frame(in_frame);
        match action {
            Action::Message(text) => match rate.check(Instant::now()) {
                Verdict::Allowed => {
                    conn.set_busy(true);
                    handle(core, conn, text).await;
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
            Action::Pong(payload) => conn.send_pong(payload),
            Action::Echo { code } => conn.close(code, ""),
            Action::Fail { code, reason } => {
                tracing::debug!(conn = conn.id, code, reason, "client broke the protocol");
                conn.close(code, reason);
            }
            Action::None => {}
        }
    }
}

fn on_read_error(conn: &Conn, error: &WebSocketError) {
    let (code, reason) = match error {
        WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) => {
            conn.gone();
            return;
        }
        WebSocketError::FrameTooLarge => (close_code::TOO_BIG, "message too big"),
        WebSocketError::InvalidUTF8 => (close_code::INVALID_PAYLOAD, "text is not UTF-8"),
        _ => (close_code::PROTOCOL_ERROR, "protocol error"),
    };
    tracing::debug!(conn = conn.id, error = %error, "websocket read error");
    conn.close(code, reason);
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
