//! A WebSocket connection's reader: frames in (fastwebsockets), ops parsed and
//! handled one at a time, in order, so replies keep the order of requests.

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

use bytes::BytesMut;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError};
use feedgate_core::envelope;
use feedgate_core::op::{self, Op};
use feedgate_core::ErrorCode;
use monoio::io::Splitable;
use monoio::net::TcpStream;
use std::os::fd::AsRawFd;

use crate::conn::{close_code, run_writer, Conn};
use crate::core::Core;
use crate::reader::{read_more, NoWrite, PollReader};
use crate::subscribe;

/// Serves an upgraded connection until it closes. `leftover` holds bytes that
/// arrived after the HTTP request head.
pub async fn serve(core: Rc<Core>, stream: TcpStream, leftover: BytesMut) {
    let limits = core.settings.limits;
    let conn = Rc::new(Conn::new(core.next_conn_id(), stream.as_raw_fd(), &limits));
    core.conns.borrow_mut().insert(conn.id, conn.clone());
    tracing::debug!(conn = conn.id, "websocket open");
    let (rd, wr) = stream.into_split();
    monoio::spawn(run_writer(conn.clone(), wr));

    let half = Rc::new(RefCell::new(Some(rd)));
    let (mut ws, _) =
        fastwebsockets::after_handshake_split(PollReader::new(half.clone(), leftover), NoWrite, Role::Server);
    // fastwebsockets refuses frames of `max_message_size` bytes or more; the
    // limit is inclusive here.
    ws.set_max_message_size(limits.max_message_bytes + 1);
    let mut message = Message::default();
    loop {
        let mut obligated = |frame: Frame<'_>| {
            answer_control(&conn, &frame);
            std::future::ready(Ok::<(), Infallible>(()))
        };
        let mut frame = match ws.read_frame(&mut obligated).await {
            Ok(frame) => frame,
            Err(e) => {
                on_read_error(&conn, &e);
                break;
            }
        };
        conn.saw_client();
        if !is_masked(&mut frame) {
            //= rfc6455#section-5.1
            //# The server MUST close the connection upon receiving a frame that
            //# is not masked.
            conn.close(close_code::PROTOCOL_ERROR, "client frames must be masked");
            break;
        }
        match frame.opcode {
            OpCode::Text | OpCode::Continuation => {
                let text = match message.add(&frame, limits.max_message_bytes) {
                    Ok(Some(text)) => text,
                    Ok(None) => continue,
                    Err((code, reason)) => {
                        conn.close(code, reason);
                        break;
                    }
                };
                if conn.is_open() {
                    conn.set_busy(true);
                    handle(&core, &conn, text).await;
                    conn.set_busy(false);
                }
            }
            //= shared/PROTOCOL.md section 3
            //# a binary frame from a client is closed with 1003.
            OpCode::Binary => {
                conn.close(close_code::UNSUPPORTED_DATA, "binary frames are not accepted");
                break;
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => {}
        }
    }
    drop(ws);
    // Read (and discard) until the client closes or the writer's linger ends
    // the socket: closing with unread bytes would send a RST that can destroy
    // our close frame before the client reads it.
    let rd = half.borrow_mut().take();
    if let Some(mut rd) = rd {
        let mut buf = BytesMut::with_capacity(4096);
        while !conn.is_gone() {
            buf.clear();
            let (result, back) = read_more(&mut rd, buf, 4096).await;
            buf = back;
            if !matches!(result, Ok(n) if n > 0) {
                break;
            }
        }
    }
    conn.gone();
    let channels: Vec<Rc<str>> = conn.subs.borrow().iter().cloned().collect();
    for channel in channels {
        subscribe::leave(&core, &conn, &channel);
    }
    core.conns.borrow_mut().remove(&conn.id);
    tracing::debug!(conn = conn.id, "websocket closed");
}

/// Whether the client masked `frame`. fastwebsockets keeps the mask key
/// private but writes it into a formatted header, which is how it is read here.
fn is_masked(frame: &mut Frame<'_>) -> bool {
    let mut head = [0u8; 14];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

/// Answers a ping with a pong, and a client's close with the closing handshake.
fn answer_control(conn: &Conn, frame: &Frame<'_>) {
    match frame.opcode {
        OpCode::Pong => conn.send_pong(&frame.payload),
        OpCode::Close => {
            //= rfc6455#section-5.5.1
            //# When sending a Close frame in response, the endpoint typically
            //# echos the status code it received.
            let code = match &frame.payload[..] {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => close_code::NORMAL,
            };
            conn.close(code, "");
        }
        _ => {}
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

/// A text message being put together from fragments.
#[derive(Default)]
struct Message {
    buf: Vec<u8>,
    open: bool,
}

impl Message {
    /// Adds a text or continuation frame; returns the whole message once its
    /// final fragment arrives, or the close code for a broken sequence.
    fn add(&mut self, frame: &Frame<'_>, max: usize) -> Result<Option<Vec<u8>>, (u16, &'static str)> {
        let starts = frame.opcode == OpCode::Text;
        if starts == self.open {
            return Err((close_code::PROTOCOL_ERROR, "bad fragment sequence"));
        }
        if self.buf.len() + frame.payload.len() > max {
            return Err((close_code::TOO_BIG, "message too big"));
        }
        if frame.fin && !self.open {
            return Ok(Some(frame.payload.to_vec()));
        }
        self.buf.extend_from_slice(&frame.payload);
        self.open = !frame.fin;
        if !frame.fin {
            return Ok(None);
        }
        let text = std::mem::take(&mut self.buf);
        if std::str::from_utf8(&text).is_err() {
            return Err((close_code::INVALID_PAYLOAD, "text is not UTF-8"));
        }
        Ok(Some(text))
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
        Op::Subscribe { channel, start } => subscribe::subscribe(core, conn, req, &channel, start).await,
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
