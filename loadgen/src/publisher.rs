//! The open-loop publisher: its own OS thread with blocking sockets, so its
//! pacing is not tied to the receivers' event loop (whose timers tick in
//! milliseconds). Commands are pipelined; a second thread reads the replies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use feedgate_core::resp;

use crate::delivery;
use crate::pacing::Schedule;

/// What the publisher writes: XADD (streams) or PUBLISH (pub/sub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Stream,
    Pubsub,
}

/// One publishing run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub redis: SocketAddr,
    pub kind: Kind,
    pub channels: Vec<String>,
    pub rate: f64,
    pub duration: Duration,
    pub payload: usize,
    /// Instruments each channel's payloads cycle over (the `sym` field).
    pub keys: u64,
    /// Time zero of the intended send times carried in payloads.
    pub epoch: Instant,
    /// When this run's message 0 is due.
    pub start: Instant,
    /// Stream retention per channel (`MAXLEN ~`).
    pub maxlen: u64,
}

/// What a run published.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Next sequence number per channel after the run.
    pub next_seq: Vec<u64>,
    pub sent: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Publishes per `plan`, continuing each channel's sequence from `next_seq`.
pub fn run(plan: &Plan, mut next_seq: Vec<u64>) -> anyhow::Result<Outcome> {
    let mut stream = TcpStream::connect(plan.redis)?;
    stream.set_nodelay(true)?;
    let reader = stream.try_clone()?;
    let schedule = Schedule { rate: plan.rate };
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let replies = std::thread::spawn(move || read_replies(reader, total));
    let maxlen = plan.maxlen.to_string();
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut next = 0u64;
    while next < total {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(plan.start);
        let due = schedule.due_by(elapsed).min(total);
        if plan.start > now {
            std::thread::sleep(plan.start - now);
            continue;
        }
        out.clear();
        for k in next..due {
            let ch = (k % plan.channels.len() as u64) as usize;
            let seq = next_seq[ch];
            next_seq[ch] += 1;
            let intended = (plan.start + schedule.due(k)).duration_since(plan.epoch).as_nanos() as u64;
            let body = delivery::payload(seq, intended, plan.keys, plan.payload);
            let name = plan.channels[ch].as_bytes();
            match plan.kind {
                Kind::Stream => resp::encode_command(
                    &mut out,
                    &[b"XADD", name, b"MAXLEN", b"~", maxlen.as_bytes(), b"*", b"data", &body],
                ),
                Kind::Pubsub => resp::encode_command(&mut out, &[b"PUBLISH", name, &body]),
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
        }
        next = due;
        if next < total {
            let target = plan.start + schedule.due(next);
            let wait = target.saturating_duration_since(Instant::now());
            if wait > Duration::from_micros(300) {
                std::thread::sleep(wait - Duration::from_micros(200));
            } else if !wait.is_zero() {
                std::thread::yield_now();
            }
        }
    }
    let (errors, first_error) = replies.join().map_err(|_| anyhow::anyhow!("reply reader panicked"))??;
    Ok(Outcome {
        next_seq,
        sent: total,
        errors,
        first_error,
    })
}

fn read_replies(mut stream: TcpStream, expected: u64) -> anyhow::Result<(u64, Option<String>)> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let (mut seen, mut errors, mut first) = (0u64, 0u64, None);
    while seen < expected {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            anyhow::bail!("redis closed the publisher connection after {seen} of {expected} replies");
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(frame) = resp::decode(&mut buf)? {
            seen += 1;
            if let Some(text) = resp::error_text(&frame) {
                errors += 1;
                first.get_or_insert(text);
            }
        }
    }
    Ok((errors, first))
}
