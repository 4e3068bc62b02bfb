'use strict';
// Benchmark peer for feedgate: a Redis -> WebSocket server in plain Node.js
// (ws + ioredis) that speaks the subset of PROTOCOL.md sections 1-3 described
// in ../README.md. Deliveries are byte-identical to feedgate's.
//
// Env: PORT (default 8081), REDIS_URL (default redis://127.0.0.1:6379).

const http = require('node:http');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');

const PORT = Number(process.env.PORT || 8081);
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';

const CHANNEL_RE = /^[A-Za-z0-9_.:@/-]{1,200}$/;
const PUBSUB_PREFIX = 'ps.';
// Entries read per stream per XREAD, as feedgate does.
const READ_COUNT = 1000;
// How long one XREAD blocks. The reader re-issues its read at least this often,
// and only then picks up streams subscribed since the read began. We accept that
// (a new channel's first delivery may wait up to this long; nothing is lost, as a
// new stream is read from the id its subscribers were told) rather than wake the
// read with CLIENT UNBLOCK from a second connection, which races with an XREAD
// still in flight and needs a retry loop plus this same timeout as a safety net.
// With traffic flowing the read returns as soon as an entry arrives anyway.
const BLOCK_MS = 100;

// Three connections: commands (XREVRANGE), the stream reader (its XREAD BLOCK
// would stall anything queued behind it), and the pub/sub subscriber (a
// connection in subscribe mode takes no other commands).
const cmd = new Redis(REDIS_URL);
const reader = new Redis(REDIS_URL);
const subscriber = new Redis(REDIS_URL);
for (const [name, conn] of [['commands', cmd], ['reader', reader], ['subscriber', subscriber]]) {
  conn.on('error', (err) => console.error(`redis ${name}: ${err.message}`));
}

/**
 * One channel: the clients it delivers to, and the clients waiting for it to be
 * set up in Redis (the XREVRANGE of a new stream, the SUBSCRIBE of a new pub/sub
 * channel). `lastId` (streams only) is the id of the last entry delivered, where
 * the next XREAD starts; null until the channel is ready.
 */
class Channel {
  constructor() {
    this.clients = new Set();
    this.waiting = new Map(); // client -> req of its subscribe
    this.ready = false;
    this.lastId = null;
  }

  get idle() {
    return this.clients.size === 0 && this.waiting.size === 0;
  }
}

/** @type {Map<string, Channel>} */
const streams = new Map();
/** @type {Map<string, Channel>} */
const pubsubs = new Map();

// ---- Payloads (PROTOCOL.md section 2), checked and serialized once per message ----

/** A value that is valid JSON as it is; anything else as a JSON string. */
function jsonValue(text) {
  try {
    JSON.parse(text);
    return text;
  } catch {
    return JSON.stringify(text);
  }
}

/** The payload of a stream entry: a lone `data` field, else an object of strings. */
function entryPayload(fields) {
  if (fields.length === 2 && fields[0] === 'data') return jsonValue(fields[1]);
  // Built by hand, not with JSON.stringify(object): an object would reorder
  // integer-like field names and drop repeated ones; the entry order must stay.
  let out = '{';
  for (let i = 0; i < fields.length; i += 2) {
    if (i > 0) out += ',';
    out += JSON.stringify(fields[i]) + ':' + JSON.stringify(fields[i + 1]);
  }
  return out + '}';
}

/** Sends one frame to every client of a channel: encoded once, shared by all. */
function broadcast(clients, json) {
  const bytes = Buffer.from(json);
  for (const client of clients) client.ws.send(bytes, { binary: false });
}

// ---- Stream ids ----

/** Compares two stream ids ("ms-seq") numerically. */
function compareIds(a, b) {
  const [am, as] = a.split('-');
  const [bm, bs] = b.split('-');
  return compareDecimal(am, bm) || compareDecimal(as, bs);
}

function compareDecimal(a, b) {
  // Decimal strings without leading zeros: longer is larger, else lexicographic.
  if (a.length !== b.length) return a.length < b.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---- Replies (PROTOCOL.md section 3), keys in the documented order ----

function withReq(req) {
  return req === undefined ? '' : `,"req":${req}`;
}

function errorReply(code, message, req) {
  return `{"type":"error","code":"${code}","message":${JSON.stringify(message)}${withReq(req)}}`;
}

function subscribedReply(name, req, position) {
  const start = position === undefined ? '' : `,"position":"${position}","recovered":true`;
  return `{"type":"subscribed","channel":"${name}"${withReq(req)}${start}}`;
}

// ---- The stream reader: one XREAD BLOCK over every subscribed stream ----

let wakeReader = null;

async function readStreams() {
  for (;;) {
    const keys = [];
    const ids = [];
    for (const [name, channel] of streams) {
      if (channel.ready) {
        keys.push(name);
        ids.push(channel.lastId);
      }
    }
    if (keys.length === 0) {
      await new Promise((resolve) => {
        wakeReader = resolve;
      });
      continue;
    }
    let reply;
    try {
      reply = await reader.xread('COUNT', READ_COUNT, 'BLOCK', BLOCK_MS, 'STREAMS', ...keys, ...ids);
    } catch (err) {
      console.error(`XREAD failed: ${err.message}`);
      await new Promise((resolve) => setTimeout(resolve, 500));
      continue;
    }
    if (reply === null) continue; // timed out
    for (const [name, entries] of reply) {
      const channel = streams.get(name);
      // The channel may have gone, or gone and come back with a newer start,
      // while the read was in flight.
      if (channel === undefined || !channel.ready) continue;
      for (const [id, fields] of entries) {
        if (compareIds(id, channel.lastId) <= 0) continue;
        channel.lastId = id;
        broadcast(channel.clients, `{"ch":"${name}","id":"${id}","data":${entryPayload(fields)}}`);
      }
    }
  }
}

/** The id of the newest entry of a stream, "0-0" when it is empty or absent. */
async function newestId(name) {
  const newest = await cmd.xrevrange(name, '+', '-', 'COUNT', 1);
  return newest.length > 0 ? newest[0][0] : '0-0';
}

// ---- Pub/sub: one subscriber connection ----

subscriber.on('message', (name, body) => {
  const channel = pubsubs.get(name);
  if (channel === undefined || channel.clients.size === 0) return;
  broadcast(channel.clients, `{"ch":"${name}","data":${jsonValue(body)}}`);
});

// ---- Subscriptions ----

/**
 * Subscribes `client` to `name`. The first subscriber of a channel sets it up in
 * Redis; others that arrive meanwhile wait for that, then all are answered.
 */
function subscribe(client, name, req) {
  const isPubsub = name.startsWith(PUBSUB_PREFIX);
  const table = isPubsub ? pubsubs : streams;
  let channel = table.get(name);
  client.subs.add(name);
  if (channel !== undefined && channel.ready) {
    channel.clients.add(client);
    client.send(subscribedReply(name, req, isPubsub ? undefined : channel.lastId));
    return;
  }
  if (channel !== undefined) {
    channel.waiting.set(client, req);
    return;
  }
  channel = new Channel();
  channel.waiting.set(client, req);
  table.set(name, channel);
  const setup = isPubsub ? subscriber.subscribe(name) : newestId(name);
  setup.then(
    (lastId) => {
      channel.ready = true;
      if (!isPubsub) {
        channel.lastId = lastId;
        if (wakeReader !== null) {
          wakeReader();
          wakeReader = null;
        }
      }
      for (const [waiter, waiterReq] of channel.waiting) {
        channel.clients.add(waiter);
        waiter.send(subscribedReply(name, waiterReq, isPubsub ? undefined : channel.lastId));
      }
      channel.waiting.clear();
      // Everyone may have left while Redis answered.
      release(table, name, channel);
    },
    (err) => {
      if (table.get(name) === channel) table.delete(name);
      const message = `redis: ${err.message}`;
      for (const [waiter, waiterReq] of channel.waiting) {
        waiter.subs.delete(name);
        waiter.send(errorReply('unavailable', message, waiterReq));
      }
    },
  );
}

/** Removes `client` from `name` (held or still waiting). */
function unsubscribe(client, name) {
  client.subs.delete(name);
  const table = name.startsWith(PUBSUB_PREFIX) ? pubsubs : streams;
  const channel = table.get(name);
  if (channel === undefined) return;
  channel.clients.delete(client);
  channel.waiting.delete(client);
  release(table, name, channel);
}

/** Drops a ready channel nobody holds; the reader leaves a stream out of its next read. */
function release(table, name, channel) {
  if (!channel.ready || !channel.idle || table.get(name) !== channel) return;
  table.delete(name);
  if (table === pubsubs) {
    // Queued on the same connection as any later SUBSCRIBE of this channel, so
    // the two reach Redis in order.
    subscriber.unsubscribe(name).catch((err) => console.error(`UNSUBSCRIBE ${name}: ${err.message}`));
  }
}

// ---- Client ops ----

function handleText(client, text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch {
    return client.send(errorReply('bad_request', 'message is not valid JSON'));
  }
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
    return client.send(errorReply('bad_request', 'message must be a JSON object'));
  }
  const req = msg.req;
  if (req !== undefined && !(Number.isInteger(req) && req >= 0)) {
    return client.send(errorReply('bad_request', '`req` must be an unsigned integer'));
  }
  const op = msg.op;
  if (op === undefined) return client.send(errorReply('bad_request', 'missing field `op`', req));
  if (typeof op !== 'string') return client.send(errorReply('bad_request', '`op` must be a string', req));

  switch (op) {
    case 'ping':
      return client.send(`{"type":"pong"${withReq(req)}}`);
    case 'subscribe':
    case 'unsubscribe': {
      const name = msg.channel;
      if (name === undefined) return client.send(errorReply('bad_request', 'missing field `channel`', req));
      if (typeof name !== 'string') return client.send(errorReply('bad_request', '`channel` must be a string', req));
      if (!CHANNEL_RE.test(name)) {
        return client.send(errorReply('bad_channel', 'channel must be 1 to 200 bytes of A-Z a-z 0-9 _ . : @ / -', req));
      }
      if (op === 'unsubscribe') {
        if (!client.subs.has(name)) return client.send(errorReply('not_subscribed', `not subscribed to ${name}`, req));
        unsubscribe(client, name);
        return client.send(`{"type":"unsubscribed","channel":"${name}"${withReq(req)}}`);
      }
      if (msg.since !== undefined || msg.last !== undefined) {
        return client.send(errorReply('bad_request', '`since` and `last` are not supported by this server', req));
      }
      if (client.subs.has(name)) {
        return client.send(errorReply('already_subscribed', `already subscribed to ${name}`, req));
      }
      return subscribe(client, name, req);
    }
    default:
      return client.send(errorReply('unknown_op', `unknown op \`${op.slice(0, 64)}\``, req));
  }
}

// ---- HTTP and WebSocket ----

// Only `/ws` upgrades; plain HTTP gets a 404.
const server = http.createServer((request, response) => {
  response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
});

const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false });

wss.on('connection', (ws) => {
  const client = {
    ws,
    subs: new Set(),
    send(json) {
      ws.send(json);
    },
  };
  ws.on('message', (data, isBinary) => {
    if (isBinary) {
      ws.close(1003, 'binary frames are not accepted');
      return;
    }
    handleText(client, data.toString());
  });
  ws.on('close', () => {
    for (const name of client.subs) unsubscribe(client, name);
  });
  ws.on('error', () => {});
});

server.listen(PORT, () => {
  console.log(`node peer listening on :${PORT}, redis ${REDIS_URL}`);
});

readStreams();

function shutdown() {
  wss.close();
  server.close();
  for (const conn of [cmd, reader, subscriber]) conn.disconnect();
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
