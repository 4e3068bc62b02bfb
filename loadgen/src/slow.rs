//! Slow and stalled neighbours: extra subscribed connections, apart from the
//! measured ones, that read one frame every M ms (`--slow`) or never read at
//! all (`--stalled`) until the run is over. What the server did to them (a
//! close and its code, `gap`s and their `dropped`, what they were sent) is
//! their outcome; they add nothing to the measured latency or loss.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::session::{connect_and_subscribe, Shared, Target};
use crate::stats::{Counts, SeqTracker};
use crate::{delivery, wsclient};

/// Longest a stalled connection reads at the end of a run.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Silence after which a draining stalled connection counts as still open.
const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// How an extra connection reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraKind {
    /// Upgrades, subscribes, reads the `subscribed` reply, then reads nothing
    /// (not even pings) until the run is over.
    Stalled,
    /// Reads one frame, then sleeps `every`, for the whole run.
    Slow { every: Duration },
}

/// How an extra connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Still open when the run ended (a stalled one: after reading everything
    /// it held, 2 s passed with nothing new).
    Open,
    /// The server sent a close frame.
    Closed { code: Option<u16>, reason: String },
    /// The connection ended without a close frame.
    Eof,
    /// Connecting, upgrading or reading failed, or the subscribe was refused.
    Failed(String),
}

/// One extra connection's state, updated by its task.
#[derive(Debug)]
pub struct Extra {
    kind: ExtraKind,
    channel: String,
    subscribed: bool,
    tracker: SeqTracker,
    /// Frames read (any opcode).
    frames: u64,
    /// Pings answered.
    pongs: u64,
    end: Option<End>,
    /// When a stalled connection has read everything it will read.
    drained: bool,
    /// When the server closed the connection, counted from its subscribe.
    closed_after: Option<Duration>,
    since: Instant,
}

/// What an extra connection came to, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtraOutcome {
    /// `stalled` or `slow`.
    pub kind: &'static str,
    /// For a slow connection: the pause after each frame.
    pub read_every_ms: Option<u64>,
    pub channel: String,
    pub subscribed: bool,
    /// `open`, `closed` (a close frame came), `eof` (ended without one) or `failed`.
    pub end: &'static str,
    pub close_code: Option<u16>,
    pub close_reason: Option<String>,
    pub error: Option<String>,
    /// Seconds from the subscribe to the close frame (read late by a stalled
    /// connection, so for those it is when the frame was read, not sent).
    pub closed_after_s: Option<f64>,
    /// Deliveries received (distinct sequence numbers).
    pub deliveries: u64,
    pub gaps: u64,
    pub gap_dropped: u64,
    pub frames: u64,
    pub pongs: u64,
    /// Every counter of the deliveries (order, staleness, holes).
    pub counts: Counts,
}

impl Extra {
    /// A connection of `kind` on `channel` whose payloads cycle over `keys`.
    pub fn new(kind: ExtraKind, channel: &str, keys: u64) -> Self {
        Self {
            kind,
            channel: channel.to_owned(),
            subscribed: false,
            tracker: SeqTracker::new(keys),
            frames: 0,
            pongs: 0,
            end: None,
            drained: false,
            closed_after: None,
            since: Instant::now(),
        }
    }

    /// Whether the subscribe was answered (or the connection failed).
    pub fn answered(&self) -> bool {
        self.subscribed || self.end.is_some()
    }

    /// Whether the connection is done with the run: ended, or (stalled) read out.
    pub fn finished(&self) -> bool {
        self.end.is_some() || self.drained || matches!(self.kind, ExtraKind::Slow { .. })
    }

    /// The outcome so far.
    pub fn outcome(&self) -> ExtraOutcome {
        let (end, close_code, close_reason, error) = match self.end.clone().unwrap_or(End::Open) {
            End::Open => ("open", None, None, None),
            End::Closed { code, reason } => ("closed", code, Some(reason), None),
            End::Eof => ("eof", None, None, None),
            End::Failed(e) => ("failed", None, None, Some(e)),
        };
        let c = self.tracker.counts;
        ExtraOutcome {
            kind: match self.kind {
                ExtraKind::Stalled => "stalled",
                ExtraKind::Slow { .. } => "slow",
            },
            read_every_ms: match self.kind {
                ExtraKind::Stalled => None,
                ExtraKind::Slow { every } => Some(every.as_millis() as u64),
            },
            channel: self.channel.clone(),
            subscribed: self.subscribed,
            end,
            close_code,
            close_reason,
            error,
            closed_after_s: self.closed_after.map(|d| d.as_secs_f64()),
            deliveries: c.received,
            gaps: c.gaps,
            gap_dropped: c.gap_dropped,
            frames: self.frames,
            pongs: self.pongs,
            counts: c,
        }
    }

    /// Takes in one text frame.
    fn on_text(&mut self, text: &[u8]) {
        if let Some(d) = delivery::parse(text) {
            self.tracker.record(d.seq, d.id);
        } else if let Some(g) = delivery::parse_gap(text) {
            self.tracker.gap(g.after, g.dropped);
        } else if delivery::is_type(text, "subscribed") {
            self.subscribed = true;
            self.since = Instant::now();
        } else if delivery::is_type(text, "error") {
            let message = format!("server error: {}", String::from_utf8_lossy(text));
            // Before the subscribe is answered, an error is its refusal.
            if !self.subscribed {
                self.end.get_or_insert(End::Failed(message));
            }
        }
    }

    /// Takes in a close frame's payload.
    fn on_close(&mut self, payload: &[u8]) {
        let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into_owned();
        self.closed_after = Some(self.since.elapsed());
        self.end.get_or_insert(End::Closed { code, reason });
    }
}

/// What handling one frame asks of the connection.
enum Next {
    Continue,
    Pong(Vec<u8>),
    Stop,
}

fn handle(shared: &Shared, slot: usize, opcode: u8, payload: &[u8]) -> Next {
    let mut extras = shared.extras.borrow_mut();
    let extra = &mut extras[slot];
    extra.frames += 1;
    match opcode {
        wsclient::TEXT => {
            extra.on_text(payload);
            if extra.end.is_some() {
                return Next::Stop;
            }
        }
        wsclient::PING => {
            extra.pongs += 1;
            return Next::Pong(wsclient::client_frame(wsclient::PONG, payload));
        }
        wsclient::CLOSE => {
            extra.on_close(payload);
            return Next::Stop;
        }
        _ => {}
    }
    Next::Continue
}

fn end(shared: &Shared, slot: usize, how: End) {
    let mut extras = shared.extras.borrow_mut();
    let extra = &mut extras[slot];
    extra.end.get_or_insert(how);
    extra.drained = true;
}

fn end_of_read(e: std::io::Error) -> End {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        End::Eof
    } else {
        End::Failed(format!("read: {e}"))
    }
}

/// Handles one frame at the front of `buf` and removes it; `false` when the
/// connection is done.
async fn take_frame(
    shared: &Shared,
    slot: usize,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    frame: wsclient::FrameRef,
) -> bool {
    let next = handle(shared, slot, frame.opcode, &buf[frame.start..frame.end]);
    buf.advance(frame.end);
    match next {
        Next::Continue => true,
        Next::Stop => false,
        Next::Pong(pong) => {
            let (r, _) = stream.write_all(pong).await;
            if let Err(e) = r {
                end(shared, slot, End::Failed(format!("pong: {e}")));
                return false;
            }
            true
        }
    }
}

/// Runs extra connection `slot` (connection number `index` for its source
/// address and `req`).
pub async fn run(target: Target, index: usize, slot: usize, shared: Rc<Shared>) {
    let (kind, channel) = {
        let extras = shared.extras.borrow();
        (extras[slot].kind, extras[slot].channel.clone())
    };
    let (mut stream, mut buf) = match connect_and_subscribe(&target, index, &channel, target.slow_rcvbuf).await {
        Ok(ok) => ok,
        Err(e) => return end(&shared, slot, End::Failed(e)),
    };
    // Until the subscribe is answered: one frame at a time, nothing read ahead.
    while !shared.extras.borrow()[slot].answered() {
        buf = match read_one(&shared, slot, &mut stream, buf).await {
            Some(back) => back,
            None => return,
        };
    }
    if shared.extras.borrow()[slot].end.is_some() {
        return;
    }
    match kind {
        ExtraKind::Slow { every } => loop {
            buf = match read_one(&shared, slot, &mut stream, buf).await {
                Some(back) => back,
                None => return,
            };
            if shared.drain_extras.get() {
                return;
            }
            monoio::time::sleep(every).await;
        },
        ExtraKind::Stalled => {
            while !shared.drain_extras.get() {
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
            let how = drain(&shared, slot, &mut stream, buf).await;
            end(&shared, slot, how);
        }
    }
}

/// Reads and records one frame; `None` once the connection has ended (the end
/// is recorded).
async fn read_one(shared: &Shared, slot: usize, stream: &mut TcpStream, buf: BytesMut) -> Option<BytesMut> {
    let (r, mut buf) = wsclient::read_frame(stream, buf).await;
    match r {
        Ok(frame) => {
            if !take_frame(shared, slot, stream, &mut buf, frame).await {
                end(shared, slot, End::Eof);
                return None;
            }
            Some(buf)
        }
        Err(e) => {
            end(shared, slot, end_of_read(e));
            None
        }
    }
}

/// Reads everything a stalled connection was sent: until a close frame, the
/// end of the stream, [`DRAIN_QUIET`] without a byte, or [`DRAIN_LIMIT`].
async fn drain(shared: &Shared, slot: usize, stream: &mut TcpStream, mut buf: BytesMut) -> End {
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        while let Some(frame) = wsclient::parse_frame(&buf) {
            if !take_frame(shared, slot, stream, &mut buf, frame).await {
                return End::Eof; // `end` keeps the close (or failure) recorded first
            }
        }
        if Instant::now() > deadline {
            return End::Open;
        }
        // A read cut short by the timeout may lose bytes (shared/TRAPS.md);
        // it only happens once nothing has come for DRAIN_QUIET, at the end.
        match monoio::time::timeout(DRAIN_QUIET, wsclient::read_more(stream, buf)).await {
            Err(_) => return End::Open,
            Ok((Ok(n), back)) if n > 0 => buf = back,
            Ok((Ok(_), _)) => return End::Eof,
            Ok((Err(e), _)) => return End::Failed(format!("read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(seq: u64) -> Vec<u8> {
        let p = String::from_utf8(delivery::payload(seq, 5, 1, 40)).unwrap();
        format!("{{\"ch\":\"lg.0\",\"id\":\"9-{seq}\",\"data\":{p}}}").into_bytes()
    }

    #[test]
    fn a_stalled_neighbour_closed_with_4008() {
        let mut e = Extra::new(ExtraKind::Stalled, "lg.0", 1);
        assert!(!e.answered());
        e.on_text(br#"{"type":"subscribed","channel":"lg.0","req":3,"position":"0-0","recovered":true}"#);
        assert!(e.answered() && !e.finished());
        for seq in 0..5 {
            e.on_text(&delivery(seq));
        }
        let mut close = 4008u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"slow consumer: outbound queue overflowed");
        e.on_close(&close);
        let o = e.outcome();
        assert_eq!((o.kind, o.end, o.close_code), ("stalled", "closed", Some(4008)));
        assert_eq!(
            o.close_reason.as_deref(),
            Some("slow consumer: outbound queue overflowed")
        );
        assert_eq!((o.deliveries, o.gaps, o.counts.silent_holes), (5, 0, 0));
        assert!(e.finished());
    }

    #[test]
    fn a_slow_neighbour_under_drop_oldest_counts_its_gaps() {
        let mut e = Extra::new(
            ExtraKind::Slow {
                every: Duration::from_millis(50),
            },
            "lg.drop_oldest.0",
            1,
        );
        e.on_text(br#"{"type":"subscribed","channel":"lg.drop_oldest.0","req":1,"position":"0-0","recovered":true}"#);
        e.on_text(&delivery(0));
        e.on_text(br#"{"type":"gap","channel":"lg.drop_oldest.0","after":"9-0","dropped":4}"#);
        e.on_text(&delivery(5));
        e.on_text(br#"{"type":"gap","channel":"lg.drop_oldest.0","after":"9-5"}"#);
        e.on_text(&delivery(9));
        let o = e.outcome();
        assert_eq!((o.kind, o.read_every_ms, o.end), ("slow", Some(50), "open"));
        assert_eq!((o.deliveries, o.gaps, o.gap_dropped), (3, 2, 4));
        assert_eq!(
            (o.counts.gaps_uncounted, o.counts.gap_mismatches, o.counts.silent_holes),
            (1, 0, 0)
        );
    }

    #[test]
    fn a_refused_subscribe_is_a_failure() {
        let mut e = Extra::new(ExtraKind::Stalled, "lg.0", 1);
        e.on_text(br#"{"type":"error","code":"bad_request","message":"max_rate","req":1}"#);
        assert!(e.answered() && e.finished());
        let o = e.outcome();
        assert_eq!(o.end, "failed");
        assert!(o.error.unwrap().contains("bad_request"));
        // A close without a code.
        let mut e = Extra::new(ExtraKind::Stalled, "lg.0", 1);
        e.on_close(b"");
        assert_eq!((e.outcome().end, e.outcome().close_code), ("closed", None));
    }
}
