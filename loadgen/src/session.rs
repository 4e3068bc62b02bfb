//! A set of subscribed WebSocket connections and the measurement of the
//! deliveries they receive while the publisher runs.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::publisher::{self, Kind, Outcome, Plan};
use crate::slow::{self, Extra, ExtraKind, ExtraOutcome};
use crate::stats::{latency_histogram, Acceptance, Counts, SeqTracker};
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
    /// `max_rate` sent with every subscribe.
    pub max_rate: Option<f64>,
    /// Instruments each channel's payloads cycle over.
    pub keys: u64,
    /// What the subscriptions were promised, for the loss accounting.
    pub acceptance: Acceptance,
    /// Receive buffer of the slow and stalled connections (kernel default when `None`).
    pub slow_rcvbuf: Option<usize>,
}

/// The subscribe op for `channel`.
pub fn subscribe_op(channel: &str, req: usize, max_rate: Option<f64>) -> String {
    match max_rate {
        Some(rate) => format!(r#"{{"op":"subscribe","channel":"{channel}","req":{req},"max_rate":{rate}}}"#),
        None => format!(r#"{{"op":"subscribe","channel":"{channel}","req":{req}}}"#),
    }
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
    /// The slow and stalled connections, apart from the measured ones.
    pub extras: RefCell<Vec<Extra>>,
    /// Set when the run is over: stalled connections then read what they hold.
    pub drain_extras: Cell<bool>,
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
    /// The server process whose CPU time each step measures over its window.
    pub server_pid: Option<u32>,
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
    /// Deliveries per second per connection, over the window.
    pub per_client_deliveries_per_sec: PerClient,
    /// The rule `lost` and `skipped` were counted by.
    pub acceptance: Acceptance,
    /// Missing deliveries the rule does not allow (see [`Acceptance`]).
    pub lost: u64,
    /// Missing deliveries the rule allows: announced by a `gap`, or conflated.
    pub skipped: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Deliveries older than one already received for the same key.
    pub stale: u64,
    /// `gap` announcements, the sum of their `dropped`, and those that disagreed
    /// with the hole that followed.
    pub gaps: u64,
    pub gap_dropped: u64,
    pub gap_mismatches: u64,
    /// (connection, key) pairs whose newest message never arrived.
    pub keys_without_newest: u64,
    pub latency_us: Latency,
    /// CPU seconds (user + system) the server used over the measured window,
    /// and per delivery in it, in microseconds (with `--server-pid`).
    pub server_cpu_s: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    #[serde(skip)]
    pub hist: Histogram<u64>,
}

/// CPU seconds process `pid` used between the window's two instants.
async fn cpu_over(pid: u32, (from, to): (Instant, Instant)) -> anyhow::Result<f64> {
    monoio::time::sleep(from.saturating_duration_since(Instant::now())).await;
    let before = crate::target::cpu_seconds(pid)?;
    monoio::time::sleep(to.saturating_duration_since(Instant::now())).await;
    Ok(crate::target::cpu_seconds(pid)? - before)
}

/// The spread of a per-connection figure.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PerClient {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl PerClient {
    /// Mean, least and greatest of `values` (all 0 when there are none).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        Self {
            mean: values.iter().sum::<f64>() / values.len() as f64,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
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
    /// (round-robin) and waits until all have answered; then opens the
    /// `extras` (slow or stalled; extra j on channel j % C) and waits for
    /// their answers too.
    pub async fn open(target: Target, connections: usize, extras: &[ExtraKind]) -> anyhow::Result<Session> {
        let shared = Rc::new(Shared {
            epoch: Instant::now(),
            hist: RefCell::new(latency_histogram()),
            window: Cell::new((0, 0)),
            received: Cell::new(0),
            trackers: RefCell::new(vec![SeqTracker::new(target.keys); connections]),
            subscribed: Cell::new(0),
            connect_errors: Cell::new(0),
            protocol_errors: Cell::new(0),
            first_error: RefCell::new(None),
            closed: Cell::new(0),
            extras: RefCell::new(
                extras
                    .iter()
                    .enumerate()
                    .map(|(j, &kind)| Extra::new(kind, &target.channels[j % target.channels.len()], target.keys))
                    .collect(),
            ),
            drain_extras: Cell::new(false),
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
        for slot in 0..extras.len() {
            monoio::spawn(slow::run(target.clone(), connections + slot, slot, shared.clone()));
        }
        wait_until(Duration::from_secs(30), || {
            shared.extras.borrow().iter().all(Extra::answered)
        })
        .await;
        let next_seq = vec![0; target.channels.len()];
        Ok(Session {
            target,
            connections,
            shared,
            next_seq,
            server_pid: None,
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
        let before: Vec<Counts> = shared.trackers.borrow().iter().map(|t| t.counts).collect();
        let plan = Plan {
            redis: self.target.redis,
            kind: self.target.kind,
            channels: self.target.channels.clone(),
            rate,
            duration: warmup + duration,
            payload,
            keys: self.target.keys,
            epoch: shared.epoch,
            start,
            maxlen: 100_000,
        };
        let seq_from = self.next_seq.clone();
        let cpu = self.server_pid.map(|pid| {
            let window = (start + warmup, start + warmup + duration);
            monoio::spawn(cpu_over(pid, window))
        });
        let outcome = publish_in_thread(plan, seq_from.clone()).await?;
        let server_cpu_s = match cpu {
            Some(probe) => Some(probe.await?),
            None => None,
        };
        self.next_seq = outcome.next_seq.clone();
        let channels = self.target.channels.len();
        let expected: u64 = (0..self.connections)
            .map(|i| outcome.next_seq[i % channels] - seq_from[i % channels])
            .sum();
        let acceptance = self.target.acceptance;
        let range = |i: usize| (seq_from[i % channels], outcome.next_seq[i % channels]);
        // Drain: until every connection has what it can still expect, or
        // nothing new for 2 s (longer when `max_rate` spaces deliveries out).
        let quiet = self.target.max_rate.map_or(Duration::from_secs(2), |r| {
            Duration::from_secs_f64((3.0 / r).clamp(2.0, 60.0))
        });
        let mut last = (Instant::now(), 0);
        loop {
            let (settled, got) = {
                let trackers = shared.trackers.borrow();
                let settled = trackers.iter().enumerate().all(|(i, t)| {
                    let (from, to) = range(i);
                    acceptance.settled(t, &before[i], from, to)
                });
                (settled, trackers.iter().map(|t| t.counts.received).sum::<u64>())
            };
            if settled {
                break;
            }
            if got != last.1 {
                last = (Instant::now(), got);
            } else if last.0.elapsed() > quiet {
                break;
            }
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
        let trackers = shared.trackers.borrow();
        let mut total = Counts::default();
        let (mut lost, mut skipped, mut keys_without_newest) = (0, 0, 0);
        let mut rates = Vec::with_capacity(trackers.len());
        for (i, t) in trackers.iter().enumerate() {
            let (from, to) = range(i);
            let delta = t.counts.since(&before[i]);
            total.add(&delta);
            let account = acceptance.account(t, &before[i], from, to);
            lost += account.lost;
            skipped += account.skipped;
            keys_without_newest += account.keys_without_newest;
            rates.push(delta.in_window as f64 / duration.as_secs_f64());
        }
        let hist = shared.hist.borrow().clone();
        let in_window = hist.len();
        Ok(Step {
            rate_offered: rate,
            published: outcome.sent,
            publish_errors: outcome.errors,
            publish_error: outcome.first_error.clone(),
            deliveries_expected: expected,
            deliveries: total.received,
            deliveries_per_sec: in_window as f64 / duration.as_secs_f64(),
            per_client_deliveries_per_sec: PerClient::of(&rates),
            acceptance,
            lost,
            skipped,
            duplicated: total.duplicated,
            out_of_order: total.out_of_order,
            stale: total.stale,
            gaps: total.gaps,
            gap_dropped: total.gap_dropped,
            gap_mismatches: total.gap_mismatches,
            keys_without_newest,
            latency_us: Latency::of(&hist),
            server_cpu_s,
            server_cpu_us_per_delivery: server_cpu_s
                .filter(|_| in_window > 0)
                .map(|s| s * 1e6 / in_window as f64),
            hist,
        })
    }

    /// Ends the slow and stalled connections' part: stalled ones now read
    /// everything they were sent (up to the close, or 2 s of silence), slow
    /// ones stop where they are. Their outcomes, in the order they were opened.
    pub async fn finish_extras(&self) -> Vec<ExtraOutcome> {
        let shared = &self.shared;
        shared.drain_extras.set(true);
        wait_until(slow::DRAIN_LIMIT + Duration::from_secs(5), || {
            shared.extras.borrow().iter().all(Extra::finished)
        })
        .await;
        shared.extras.borrow().iter().map(Extra::outcome).collect()
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

/// Connects connection `index` (which picks its source address and `req`),
/// upgrades, and sends the subscribe to `channel`; returns the stream and the
/// bytes read past the upgrade.
pub async fn connect_and_subscribe(
    target: &Target,
    index: usize,
    channel: &str,
    rcvbuf: Option<usize>,
) -> Result<(TcpStream, BytesMut), String> {
    let source = (!target.sources.is_empty()).then(|| target.sources[index % target.sources.len()]);
    let mut stream = wsclient::connect(target.ws, source, rcvbuf)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let buf = wsclient::handshake(&mut stream, target.ws, &target.path)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let op = subscribe_op(channel, index, target.max_rate);
    let (r, _) = stream
        .write_all(wsclient::client_frame(wsclient::TEXT, op.as_bytes()))
        .await;
    r.map_err(|e| format!("subscribe: {e}"))?;
    Ok((stream, buf))
}

async fn run_connection(target: Target, index: usize, shared: Rc<Shared>) {
    let channel = &target.channels[index % target.channels.len()];
    let (mut stream, mut buf) = match connect_and_subscribe(&target, index, channel, None).await {
        Ok(ok) => ok,
        Err(e) => return shared.note_error(&shared.connect_errors, e),
    };
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
        let in_window = (from..to).contains(&d.t_ns);
        if in_window {
            let us = now.saturating_sub(d.t_ns) / 1000;
            let _ = shared.hist.borrow_mut().record(us.max(1));
        }
        shared.received.set(shared.received.get() + 1);
        let mut trackers = shared.trackers.borrow_mut();
        let t = &mut trackers[index];
        t.record(d.seq, d.id);
        t.counts.in_window += u64::from(in_window);
    } else if delivery::is_type(text, "gap") {
        match delivery::parse_gap(text) {
            Some(g) => shared.trackers.borrow_mut()[index].gap(g.after, g.dropped),
            None => shared.note_error(
                &shared.protocol_errors,
                format!("unreadable gap: {}", String::from_utf8_lossy(text)),
            ),
        }
    } else if delivery::is_type(text, "subscribed") {
        shared.subscribed.set(shared.subscribed.get() + 1);
    } else if delivery::is_type(text, "error") {
        shared.note_error(&shared.protocol_errors, String::from_utf8_lossy(text).into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_ops_carry_max_rate_only_when_asked() {
        let plain: serde_json::Value = serde_json::from_str(&subscribe_op("lg.conflate.3", 7, None)).unwrap();
        assert_eq!(
            plain,
            serde_json::json!({"op":"subscribe","channel":"lg.conflate.3","req":7})
        );
        for rate in [10.0, 0.5, 2500.0] {
            let op: serde_json::Value = serde_json::from_str(&subscribe_op("a", 1, Some(rate))).unwrap();
            assert_eq!(op["max_rate"].as_f64(), Some(rate));
        }
    }

    #[test]
    fn per_client_spread() {
        let p = PerClient::of(&[1.0, 4.0, 10.0]);
        assert_eq!((p.mean, p.min, p.max), (5.0, 1.0, 10.0));
        let none = PerClient::of(&[]);
        assert_eq!((none.mean, none.min, none.max), (0.0, 0.0, 0.0));
    }
}
