//! A set of subscribed WebSocket connections and the measurement of the
//! deliveries they receive while the publisher runs.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use hdrhistogram::Histogram;
use monoio::io::AsyncWriteRentExt;

use crate::publisher::{self, Kind, Outcome, Plan};
use crate::stats::{latency_histogram, SeqTracker};
use crate::{delivery, wsclient};

/// Connections opened at once while connecting.
const CONNECT_BATCH: usize = 256;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub ws: SocketAddr,
    pub path: String,
    pub redis: SocketAddr,
    pub kind: Kind,
    pub channels: Vec<String>,
    pub sources: Vec<IpAddr>,
}

/// State shared by the receiving tasks (one thread: `Cell`/`RefCell`).
pub struct Shared {
    pub epoch: Instant,
    /// Latencies of deliveries whose intended time falls in the window.
    pub hist: RefCell<Histogram<u64>>,
    window: Cell<(u64, u64)>,
    pub received: Cell<u64>,
    pub trackers: RefCell<Vec<SeqTracker>>,
    pub subscribed: Cell<usize>,
    pub connect_errors: Cell<usize>,
    pub protocol_errors: Cell<usize>,
    pub first_error: RefCell<Option<String>>,
    pub closed: Cell<usize>,
}

impl Shared {
    fn note_error(&self, counter: &Cell<usize>, message: String) {
        counter.set(counter.get() + 1);
        self.first_error.borrow_mut().get_or_insert(message);
    }
}

/// Subscribed connections, ready for measurement steps.
pub struct Session {
    pub target: Target,
    pub connections: usize,
    pub shared: Rc<Shared>,
    next_seq: Vec<u64>,
}

/// What one measurement step saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub rate_offered: f64,
    pub published: u64,
    pub publish_errors: u64,
    /// The first error Redis answered the publisher with.
    pub publish_error: Option<String>,
    pub deliveries_expected: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub latency_us: Latency,
    #[serde(skip)]
    pub hist: Histogram<u64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub p99_99: u64,
    pub max: u64,
    pub count: u64,
}

impl Latency {
    /// Percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_percentile(50.0),
            p90: h.value_at_percentile(90.0),
            p99: h.value_at_percentile(99.0),
            p99_9: h.value_at_percentile(99.9),
            p99_99: h.value_at_percentile(99.99),
            max: h.max(),
            count: h.len(),
        }
    }
}

impl Session {
    /// Opens `connections` connections, subscribes each to one channel
    /// (round-robin) and waits until all have answered.
    pub async fn open(target: Target, connections: usize) -> anyhow::Result<Session> {
        let shared = Rc::new(Shared {
            epoch: Instant::now(),
            hist: RefCell::new(latency_histogram()),
            window: Cell::new((0, 0)),
            received: Cell::new(0),
            trackers: RefCell::new(vec![SeqTracker::default(); connections]),
            subscribed: Cell::new(0),
            connect_errors: Cell::new(0),
            protocol_errors: Cell::new(0),
            first_error: RefCell::new(None),
            closed: Cell::new(0),
        });
        for batch_start in (0..connections).step_by(CONNECT_BATCH) {
            let batch_end = (batch_start + CONNECT_BATCH).min(connections);
            for index in batch_start..batch_end {
                monoio::spawn(run_connection(target.clone(), index, shared.clone()));
            }
            wait_until(Duration::from_secs(30), || {
                shared.subscribed.get() + shared.connect_errors.get() + shared.protocol_errors.get() >= batch_end
            })
            .await;
        }
        let next_seq = vec![0; target.channels.len()];
        Ok(Session {
            target,
            connections,
            shared,
            next_seq,
        })
    }

    /// Publishes at `rate` for `warmup + duration` and measures deliveries of
    /// messages intended inside the last `duration`.
    pub async fn step(
        &mut self,
        rate: f64,
        warmup: Duration,
        duration: Duration,
        payload: usize,
    ) -> anyhow::Result<Step> {
        let shared = &self.shared;
        let start = Instant::now() + Duration::from_millis(50);
        let from = (start + warmup).duration_since(shared.epoch).as_nanos() as u64;
        let to = from + duration.as_nanos() as u64;
        shared.window.set((from, to));
        *shared.hist.borrow_mut() = latency_histogram();
        let before: Vec<(u64, u64, u64)> = shared
            .trackers
            .borrow()
            .iter()
            .map(|t| (t.received, t.duplicated, t.out_of_order))
            .collect();
        let plan = Plan {
            redis: self.target.redis,
            kind: self.target.kind,
            channels: self.target.channels.clone(),
            rate,
            duration: warmup + duration,
            payload,
            epoch: shared.epoch,
            start,
            maxlen: 100_000,
        };
        let seq_from = self.next_seq.clone();
        let outcome = publish_in_thread(plan, seq_from.clone()).await?;
        self.next_seq = outcome.next_seq.clone();
        let channels = self.target.channels.len();
        let expected: u64 = (0..self.connections)
            .map(|i| outcome.next_seq[i % channels] - seq_from[i % channels])
            .sum();
        let received_before: u64 = before.iter().map(|b| b.0).sum();
        // Drain: until everything arrived, or nothing new for 2 s.
        let mut last = (Instant::now(), 0);
        loop {
            let got: u64 = shared.trackers.borrow().iter().map(|t| t.received).sum::<u64>() - received_before;
            if got >= expected {
                break;
            }
            if got != last.1 {
                last = (Instant::now(), got);
            } else if last.0.elapsed() > Duration::from_secs(2) {
                break;
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        let trackers = shared.trackers.borrow();
        let (mut deliveries, mut lost, mut dup, mut ooo) = (0, 0, 0, 0);
        for (i, t) in trackers.iter().enumerate() {
            let ch = i % channels;
            deliveries += t.received - before[i].0;
            dup += t.duplicated - before[i].1;
            ooo += t.out_of_order - before[i].2;
            lost += t.missing(seq_from[ch], outcome.next_seq[ch]);
        }
        let hist = shared.hist.borrow().clone();
        let in_window = hist.len();
        Ok(Step {
            rate_offered: rate,
            published: outcome.sent,
            publish_errors: outcome.errors,
            publish_error: outcome.first_error.clone(),
            deliveries_expected: expected,
            deliveries,
            deliveries_per_sec: in_window as f64 / duration.as_secs_f64(),
            lost,
            duplicated: dup,
            out_of_order: ooo,
            latency_us: Latency::of(&hist),
            hist,
        })
    }
}

async fn publish_in_thread(plan: Plan, seqs: Vec<u64>) -> anyhow::Result<Outcome> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let handle = std::thread::spawn(move || {
        let result = publisher::run(&plan, seqs);
        flag.store(true, Ordering::Release);
        result
    });
    while !done.load(Ordering::Acquire) {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.join().map_err(|_| anyhow::anyhow!("publisher panicked"))?
}

/// Polls `ready` every 10 ms for up to `limit`.
pub async fn wait_until(limit: Duration, ready: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            return false;
        }
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

async fn run_connection(target: Target, index: usize, shared: Rc<Shared>) {
    let source = (!target.sources.is_empty()).then(|| target.sources[index % target.sources.len()]);
    let mut stream = match wsclient::connect(target.ws, source).await {
        Ok(s) => s,
        Err(e) => return shared.note_error(&shared.connect_errors, format!("connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    let mut buf = match wsclient::handshake(&mut stream, target.ws, &target.path).await {
        Ok(b) => b,
        Err(e) => return shared.note_error(&shared.connect_errors, format!("handshake: {e}")),
    };
    let channel = &target.channels[index % target.channels.len()];
    let op = format!(r#"{{"op":"subscribe","channel":"{channel}","req":{index}}}"#);
    let (r, _) = stream
        .write_all(wsclient::client_frame(wsclient::TEXT, op.as_bytes()))
        .await;
    if let Err(e) = r {
        return shared.note_error(&shared.connect_errors, format!("subscribe: {e}"));
    }
    loop {
        while let Some(frame) = wsclient::parse_frame(&buf) {
            let payload = &buf[frame.start..frame.end];
            match frame.opcode {
                wsclient::TEXT => on_text(&shared, index, payload),
                wsclient::PING => {
                    let pong = wsclient::client_frame(wsclient::PONG, payload);
                    let (r, _) = stream.write_all(pong).await;
                    if r.is_err() {
                        break;
                    }
                }
                wsclient::CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    shared.note_error(&shared.protocol_errors, format!("server closed with {code:?}"));
                    shared.closed.set(shared.closed.get() + 1);
                    return;
                }
                _ => {}
            }
            buf.advance(frame.end);
        }
        let (n, back) = wsclient::read_more(&mut stream, buf).await;
        buf = back;
        if !matches!(n, Ok(n) if n > 0) {
            shared.closed.set(shared.closed.get() + 1);
            return;
        }
    }
}

fn on_text(shared: &Shared, index: usize, text: &[u8]) {
    if let Some(d) = delivery::parse(text) {
        let now = shared.epoch.elapsed().as_nanos() as u64;
        let (from, to) = shared.window.get();
        if (from..to).contains(&d.t_ns) {
            let us = now.saturating_sub(d.t_ns) / 1000;
            let _ = shared.hist.borrow_mut().record(us.max(1));
        }
        shared.received.set(shared.received.get() + 1);
        shared.trackers.borrow_mut()[index].record(d.seq);
    } else if text.starts_with(br#"{"type":"subscribed""#) {
        shared.subscribed.set(shared.subscribed.get() + 1);
    } else if text.starts_with(br#"{"type":"error""#) {
        shared.note_error(&shared.protocol_errors, String::from_utf8_lossy(text).into_owned());
    }
}
