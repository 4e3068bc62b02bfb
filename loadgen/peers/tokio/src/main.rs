//! `tokio-peer`: a benchmark peer for feedgate. A Redis-to-WebSocket server on
//! tokio, tokio-tungstenite and the `redis` crate that speaks the subset of
//! PROTOCOL.md sections 1-3 described in ../README.md, with deliveries
//! byte-identical to feedgate's.
//!
//! Env: `PORT` (default 8082), `REDIS_URL` (default `redis://127.0.0.1:6379`).
//!
//! Layout: all subscription state lives in one [`Hub`] behind a mutex that is
//! never held across an await. Each connection has a reader (its ops) and a
//! writer task fed by an unbounded channel; a delivery is serialized once into
//! a `Utf8Bytes` that every subscriber's queue shares (a clone is a reference
//! count). One task runs XREAD BLOCK over every subscribed stream, one reads
//! the pub/sub connection, and one issues that connection's SUBSCRIBE and
//! UNSUBSCRIBE in order.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::{AsyncConnectionConfig, RedisError, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const PUBSUB_PREFIX: &str = "ps.";
/// Entries read per stream per XREAD, as feedgate does.
const READ_COUNT: usize = 1000;
/// How long one XREAD blocks. The reader re-issues its read at least this
/// often, and only then picks up streams subscribed since the read began. We
/// accept that (a new channel's first delivery may wait up to this long;
/// nothing is lost, as a new stream is read from the id its subscribers were
/// told) rather than wake the read with CLIENT UNBLOCK from another
/// connection, which races with an XREAD still in flight and needs a retry
/// loop plus this same timeout as a safety net. With traffic flowing the read
/// returns as soon as an entry arrives anyway.
const BLOCK_MS: u64 = 100;

type Tx = mpsc::UnboundedSender<Message>;

// ---- Stream ids ----

/// A Redis stream id, `ms-seq`, ordered as Redis orders them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

// ---- Payloads (PROTOCOL.md section 2), checked and serialized once per message ----

/// Appends `text` as a JSON string. `serde_json` escapes exactly as feedgate does
/// (`\"`, `\\`, `\b \f \n \r \t`, other control characters as `\u00xx`).
fn push_json_string(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).expect("a str always serializes"));
}

/// Appends a value that is valid JSON as it is, anything else as a JSON string
/// (bytes that are not UTF-8 become U+FFFD, as a text frame must be UTF-8).
fn push_value(out: &mut String, raw: &[u8]) {
    match std::str::from_utf8(raw) {
        Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => out.push_str(text),
        Ok(text) => push_json_string(out, text),
        Err(_) => push_json_string(out, &String::from_utf8_lossy(raw)),
    }
}

/// Appends the payload of a stream entry (`fields` alternate name and value):
/// a lone `data` field as a value, else an object of strings in entry order.
fn push_entry(out: &mut String, fields: &[Vec<u8>]) {
    if let [name, value] = fields {
        if name == b"data" {
            return push_value(out, value);
        }
    }
    out.push('{');
    for (i, pair) in fields.chunks_exact(2).enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(out, &String::from_utf8_lossy(&pair[0]));
        out.push(':');
        push_json_string(out, &String::from_utf8_lossy(&pair[1]));
    }
    out.push('}');
}

// Channel names are checked against PROTOCOL.md section 1, whose alphabet needs
// no JSON escaping, so names are spliced as they are.

fn stream_delivery(channel: &str, id: StreamId, fields: &[Vec<u8>]) -> Utf8Bytes {
    let mut out = String::with_capacity(64 + channel.len() + fields.iter().map(Vec::len).sum::<usize>());
    out.push_str("{\"ch\":\"");
    out.push_str(channel);
    out.push_str("\",\"id\":\"");
    out.push_str(&id.to_string());
    out.push_str("\",\"data\":");
    push_entry(&mut out, fields);
    out.push('}');
    out.into()
}

fn pubsub_delivery(channel: &str, body: &[u8]) -> Utf8Bytes {
    let mut out = String::with_capacity(32 + channel.len() + body.len());
    out.push_str("{\"ch\":\"");
    out.push_str(channel);
    out.push_str("\",\"data\":");
    push_value(&mut out, body);
    out.push('}');
    out.into()
}

// ---- Replies (PROTOCOL.md section 3), keys in the documented order ----

fn req_field(req: Option<u64>) -> String {
    req.map_or_else(String::new, |n| format!(",\"req\":{n}"))
}

fn subscribed_reply(channel: &str, req: Option<u64>, position: Option<StreamId>) -> String {
    let start = position.map_or_else(String::new, |p| format!(",\"position\":\"{p}\",\"recovered\":true"));
    format!(
        "{{\"type\":\"subscribed\",\"channel\":\"{channel}\"{}{start}}}",
        req_field(req)
    )
}

fn error_reply(code: &str, message: &str, req: Option<u64>) -> String {
    let mut out = format!("{{\"type\":\"error\",\"code\":\"{code}\",\"message\":");
    push_json_string(&mut out, message);
    out.push_str(&req_field(req));
    out.push('}');
    out
}

fn send(tx: &Tx, json: String) {
    // A closed queue means the connection is going away; its cleanup follows.
    let _ = tx.send(Message::Text(json.into()));
}

// ---- Subscription state ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Pubsub,
}

impl Kind {
    fn of(channel: &str) -> Kind {
        if channel.starts_with(PUBSUB_PREFIX) {
            Kind::Pubsub
        } else {
            Kind::Stream
        }
    }
}

/// A client waiting for its channel to be set up in Redis.
struct Waiter {
    client: u64,
    tx: Tx,
    req: Option<u64>,
}

/// One channel: who it delivers to, and who waits for it to be set up in Redis
/// (the XREVRANGE of a new stream, the SUBSCRIBE of a new pub/sub channel).
#[derive(Default)]
struct Channel {
    clients: HashMap<u64, Tx>,
    waiting: Vec<Waiter>,
    ready: bool,
    /// Streams: the last id delivered, where the next XREAD starts.
    last_id: StreamId,
}

impl Channel {
    fn idle(&self) -> bool {
        self.clients.is_empty() && self.waiting.is_empty()
    }

    fn position(&self, kind: Kind) -> Option<StreamId> {
        (kind == Kind::Stream).then_some(self.last_id)
    }
}

#[derive(Default)]
struct Hub {
    streams: HashMap<String, Channel>,
    pubsubs: HashMap<String, Channel>,
    /// Each connection's channels, held or waiting.
    subs: HashMap<u64, HashSet<String>>,
}

impl Hub {
    fn table(&mut self, kind: Kind) -> &mut HashMap<String, Channel> {
        match kind {
            Kind::Stream => &mut self.streams,
            Kind::Pubsub => &mut self.pubsubs,
        }
    }
}

enum PubsubCommand {
    Subscribe(String),
    Unsubscribe(String),
}

struct Shared {
    hub: Mutex<Hub>,
    /// For XREVRANGE.
    commands: MultiplexedConnection,
    /// Wakes the stream reader when it has nothing to read and a stream gets ready.
    stream_ready: Notify,
    pubsub: mpsc::UnboundedSender<PubsubCommand>,
    next_client: AtomicU64,
}

impl Shared {
    fn subscribe(self: &Arc<Self>, client: u64, tx: &Tx, channel: String, req: Option<u64>) {
        let kind = Kind::of(&channel);
        let mut hub = self.hub.lock().unwrap();
        if !hub.subs.entry(client).or_default().insert(channel.clone()) {
            let message = format!("already subscribed to {channel}");
            return send(tx, error_reply("already_subscribed", &message, req));
        }
        let table = hub.table(kind);
        if let Some(ch) = table.get_mut(&channel) {
            if ch.ready {
                ch.clients.insert(client, tx.clone());
                send(tx, subscribed_reply(&channel, req, ch.position(kind)));
            } else {
                let tx = tx.clone();
                ch.waiting.push(Waiter { client, tx, req });
            }
            return;
        }
        let mut ch = Channel::default();
        let tx = tx.clone();
        ch.waiting.push(Waiter { client, tx, req });
        table.insert(channel.clone(), ch);
        drop(hub);
        match kind {
            Kind::Stream => {
                let shared = self.clone();
                tokio::spawn(async move {
                    let result = newest_id(shared.commands.clone(), &channel).await;
                    shared.set_up(kind, &channel, result.map(Some));
                });
            }
            Kind::Pubsub => {
                let _ = self.pubsub.send(PubsubCommand::Subscribe(channel));
            }
        }
    }

    /// Redis has answered the setup of `channel`: answer everyone waiting for it.
    fn set_up(&self, kind: Kind, channel: &str, result: Result<Option<StreamId>, RedisError>) {
        let mut guard = self.hub.lock().unwrap();
        let hub = &mut *guard;
        let table = hub.table(kind);
        match result {
            Ok(position) => {
                let Some(ch) = table.get_mut(channel) else { return };
                ch.ready = true;
                if let Some(id) = position {
                    ch.last_id = id;
                }
                for waiter in ch.waiting.drain(..) {
                    send(&waiter.tx, subscribed_reply(channel, waiter.req, position));
                    ch.clients.insert(waiter.client, waiter.tx);
                }
                // Everyone may have left while Redis answered.
                self.release(table, kind, channel);
                if kind == Kind::Stream {
                    self.stream_ready.notify_one();
                }
            }
            Err(e) => {
                let Some(ch) = table.remove(channel) else { return };
                let message = format!("redis: {e}");
                for waiter in ch.waiting {
                    if let Some(subs) = hub.subs.get_mut(&waiter.client) {
                        subs.remove(channel);
                    }
                    send(&waiter.tx, error_reply("unavailable", &message, waiter.req));
                }
            }
        }
    }

    fn unsubscribe(&self, client: u64, tx: &Tx, channel: &str, req: Option<u64>) {
        let mut hub = self.hub.lock().unwrap();
        let held = hub.subs.get_mut(&client).is_some_and(|subs| subs.remove(channel));
        if !held {
            return send(
                tx,
                error_reply("not_subscribed", &format!("not subscribed to {channel}"), req),
            );
        }
        self.leave(&mut hub, client, channel);
        send(
            tx,
            format!(
                "{{\"type\":\"unsubscribed\",\"channel\":\"{channel}\"{}}}",
                req_field(req)
            ),
        );
    }

    fn disconnect(&self, client: u64) {
        let mut hub = self.hub.lock().unwrap();
        for channel in hub.subs.remove(&client).unwrap_or_default() {
            self.leave(&mut hub, client, &channel);
        }
    }

    fn leave(&self, hub: &mut Hub, client: u64, channel: &str) {
        let kind = Kind::of(channel);
        let table = hub.table(kind);
        if let Some(ch) = table.get_mut(channel) {
            ch.clients.remove(&client);
            ch.waiting.retain(|w| w.client != client);
            self.release(table, kind, channel);
        }
    }

    /// Drops a ready channel nobody holds: the reader leaves a stream out of its
    /// next read; a pub/sub channel is unsubscribed, in order with any later
    /// SUBSCRIBE of it.
    fn release(&self, table: &mut HashMap<String, Channel>, kind: Kind, channel: &str) {
        if table.get(channel).is_some_and(|ch| ch.ready && ch.idle()) {
            table.remove(channel);
            if kind == Kind::Pubsub {
                let _ = self.pubsub.send(PubsubCommand::Unsubscribe(channel.to_owned()));
            }
        }
    }
}

// ---- Redis ----

/// The id of the newest entry of a stream, 0-0 when it is empty or absent.
async fn newest_id(mut conn: MultiplexedConnection, key: &str) -> Result<StreamId, RedisError> {
    let reply: Value = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(match reply {
        Value::Array(entries) => match entries.first() {
            Some(Value::Array(entry)) => entry_id(entry.first()).unwrap_or_default(),
            _ => StreamId::default(),
        },
        _ => StreamId::default(),
    })
}

fn entry_id(value: Option<&Value>) -> Option<StreamId> {
    match value? {
        Value::BulkString(bytes) => StreamId::parse(bytes),
        Value::SimpleString(text) => StreamId::parse(text.as_bytes()),
        _ => None,
    }
}

/// One stream's part of an XREAD reply: its key and its entries (id, fields).
type StreamEntries = (String, Vec<(StreamId, Vec<Vec<u8>>)>);

/// Reads an XREAD reply (RESP2): `[[key, [[id, [field, value, ...]], ...]], ...]`.
fn parse_xread(reply: Value) -> Option<Vec<StreamEntries>> {
    let Value::Array(streams) = reply else {
        return matches!(reply, Value::Nil).then(Vec::new);
    };
    let mut out = Vec::with_capacity(streams.len());
    for stream in streams {
        let Value::Array(mut pair) = stream else { return None };
        let (Some(Value::Array(entries)), Some(Value::BulkString(key))) = (pair.pop(), pair.pop()) else {
            return None;
        };
        let mut parsed = Vec::with_capacity(entries.len());
        for entry in entries {
            let Value::Array(mut entry) = entry else { return None };
            let Some(Value::Array(fields)) = entry.pop() else {
                return None;
            };
            let id = entry_id(entry.first())?;
            let fields = fields
                .into_iter()
                .map(|v| match v {
                    Value::BulkString(bytes) => Some(bytes),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            parsed.push((id, fields));
        }
        out.push((String::from_utf8(key).ok()?, parsed));
    }
    Some(out)
}

/// One XREAD BLOCK loop over every ready stream, each from its last delivered id.
async fn read_streams(shared: Arc<Shared>, mut conn: MultiplexedConnection) {
    loop {
        let cursors: Vec<(String, StreamId)> = {
            let hub = shared.hub.lock().unwrap();
            hub.streams
                .iter()
                .filter(|(_, ch)| ch.ready)
                .map(|(name, ch)| (name.clone(), ch.last_id))
                .collect()
        };
        if cursors.is_empty() {
            shared.stream_ready.notified().await;
            continue;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS");
        for (name, _) in &cursors {
            cmd.arg(name);
        }
        for (_, id) in &cursors {
            cmd.arg(id.to_string());
        }
        let reply: Value = match cmd.query_async(&mut conn).await {
            Ok(reply) => reply,
            Err(e) if e.is_unrecoverable_error() => {
                eprintln!("redis stream reader lost: {e}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("XREAD failed: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let Some(streams) = parse_xread(reply) else {
            eprintln!("unexpected XREAD reply");
            continue;
        };
        let mut hub = shared.hub.lock().unwrap();
        for (name, entries) in streams {
            // The channel may have gone, or gone and come back with a newer
            // start, while the read was in flight.
            let Some(ch) = hub.streams.get_mut(&name).filter(|ch| ch.ready) else {
                continue;
            };
            for (id, fields) in entries {
                if id <= ch.last_id {
                    continue;
                }
                ch.last_id = id;
                let frame = stream_delivery(&name, id, &fields);
                for tx in ch.clients.values() {
                    let _ = tx.send(Message::Text(frame.clone()));
                }
            }
        }
    }
}

/// Issues SUBSCRIBE and UNSUBSCRIBE on the pub/sub connection, one at a time
/// and in the order asked.
async fn control_pubsub(
    shared: Arc<Shared>,
    mut sink: PubSubSink,
    mut commands: mpsc::UnboundedReceiver<PubsubCommand>,
) {
    while let Some(command) = commands.recv().await {
        match command {
            PubsubCommand::Subscribe(channel) => {
                let result = sink.subscribe(&channel).await;
                shared.set_up(Kind::Pubsub, &channel, result.map(|()| None));
            }
            PubsubCommand::Unsubscribe(channel) => {
                if let Err(e) = sink.unsubscribe(&channel).await {
                    eprintln!("UNSUBSCRIBE {channel}: {e}");
                }
            }
        }
    }
}

async fn read_pubsub(shared: Arc<Shared>, mut messages: PubSubStream) {
    while let Some(msg) = messages.next().await {
        let name = msg.get_channel_name();
        let hub = shared.hub.lock().unwrap();
        let Some(ch) = hub.pubsubs.get(name).filter(|ch| ch.ready && !ch.clients.is_empty()) else {
            continue;
        };
        let frame = pubsub_delivery(name, msg.get_payload_bytes());
        for tx in ch.clients.values() {
            let _ = tx.send(Message::Text(frame.clone()));
        }
    }
    eprintln!("redis pub/sub connection lost");
    std::process::exit(1);
}

// ---- Client ops ----

fn handle_text(shared: &Arc<Shared>, client: u64, tx: &Tx, text: &str) {
    let bad = |message: &str, req| send(tx, error_reply("bad_request", message, req));
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return bad("message is not valid JSON", None);
    };
    let Some(obj) = value.as_object() else {
        return bad("message must be a JSON object", None);
    };
    let req = match obj.get("req") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) => Some(n),
            None => return bad("`req` must be an unsigned integer", None),
        },
    };
    let op = match obj.get("op") {
        None => return bad("missing field `op`", req),
        Some(v) => match v.as_str() {
            Some(op) => op,
            None => return bad("`op` must be a string", req),
        },
    };
    match op {
        "ping" => send(tx, format!("{{\"type\":\"pong\"{}}}", req_field(req))),
        "subscribe" | "unsubscribe" => {
            let channel = match obj.get("channel") {
                None => return bad("missing field `channel`", req),
                Some(v) => match v.as_str() {
                    Some(name) => name,
                    None => return bad("`channel` must be a string", req),
                },
            };
            if !is_valid_channel(channel) {
                let message = "channel must be 1 to 200 bytes of A-Z a-z 0-9 _ . : @ / -";
                return send(tx, error_reply("bad_channel", message, req));
            }
            if op == "unsubscribe" {
                shared.unsubscribe(client, tx, channel, req);
            } else if obj.contains_key("since") || obj.contains_key("last") {
                bad("`since` and `last` are not supported by this server", req);
            } else {
                shared.subscribe(client, tx, channel.to_owned(), req);
            }
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            send(tx, error_reply("unknown_op", &format!("unknown op `{shown}`"), req));
        }
    }
}

fn is_valid_channel(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-'))
}

// ---- Connections ----

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // The error type is tungstenite's handshake callback signature.
    #[allow(clippy::result_large_err)]
    let only_ws = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() == "/ws" {
            Ok(response)
        } else {
            let mut not_found = ErrorResponse::new(Some("not found\n".to_owned()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            Err(not_found)
        }
    };
    // tokio-tungstenite negotiates no extensions, so no permessage-deflate.
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, only_ws).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    let client = shared.next_client.fetch_add(1, Ordering::Relaxed);

    // The writer: queue what is ready, then flush once, so a burst of
    // deliveries goes out in few writes.
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if sink.feed(msg).await.is_err() {
                return;
            }
            while let Ok(msg) = rx.try_recv() {
                if sink.feed(msg).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });

    while let Some(msg) = source.next().await {
        match msg {
            Ok(Message::Text(text)) => handle_text(&shared, client, &tx, text.as_str()),
            Ok(Message::Binary(_)) => {
                let reason = "binary frames are not accepted".into();
                let _ = tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Unsupported,
                    reason,
                })));
                break;
            }
            // tungstenite answers pings and close frames itself.
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // Drops every queue handle the hub held; the writer ends once it has sent
    // what is queued.
    shared.disconnect(client);
    drop(tx);
    let _ = writer.await;
}

// current_thread, not the multi-thread scheduler: the peers are compared pinned
// to one core (taskset), where the multi-thread runtime would still run a worker
// beside the thread blocked in main and hand wakeups between them. One thread
// with one event loop is how a 1-core tokio service is best run, and it is the
// same shape as the Node peer.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::var("PORT").ok().map_or(Ok(8082), |p| p.parse())?;
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());

    // Three connections: commands (XREVRANGE), the stream reader (its XREAD
    // BLOCK would stall anything queued behind it; no response timeout, as the
    // read blocks on purpose) and the pub/sub connection.
    let redis = redis::Client::open(redis_url.as_str())?;
    let commands = redis.get_multiplexed_async_connection().await?;
    let reader = redis
        .get_multiplexed_async_connection_with_config(&AsyncConnectionConfig::new().set_response_timeout(None))
        .await?;
    let (pubsub_sink, pubsub_stream) = redis.get_async_pubsub().await?.split();

    let (pubsub_tx, pubsub_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        hub: Mutex::new(Hub::default()),
        commands,
        stream_ready: Notify::new(),
        pubsub: pubsub_tx,
        next_client: AtomicU64::new(1),
    });
    tokio::spawn(read_streams(shared.clone(), reader));
    tokio::spawn(control_pubsub(shared.clone(), pubsub_sink, pubsub_rx));
    tokio::spawn(read_pubsub(shared.clone(), pubsub_stream));

    let listener = TcpListener::bind(("0.0.0.0", port)).await?;
    eprintln!("tokio peer listening on :{port}, redis {redis_url}");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(shared.clone(), stream));
                }
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    Ok(())
}
