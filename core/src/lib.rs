//! feedgate's sans-I/O core: everything that can be decided without a socket.
//!
//! - [`channel`]: channel names (PROTOCOL.md section 1) and namespaces.
//! - [`stream_id`]: Redis stream ids, parsed and compared.
//! - [`payload`]: the payload rules of PROTOCOL.md section 2.
//! - [`frame`]: server-to-client WebSocket frames, built once into `Bytes`.
//! - [`envelope`]: the JSON of deliveries, replies and errors.
//! - [`http`]: HTTP/1.1 request heads, routes and the WebSocket handshake.
//! - [`ws_decode`]: client frames cut out of received bytes (RFC 6455 section 5.2).
//! - [`inbound`]: what to do with each frame a client sends (RFC 6455).
//! - [`op`]: parsing client ops into [`op::Op`].
//! - [`json_guard`]: the depth and escape checks run on client JSON before parsing.
//! - [`error`]: protocol error codes and the crate's error type.
//! - [`resp`]: RESP commands and the decoding of Redis replies.
//! - [`key`]: a namespace's `key` field, read off a payload.
//! - [`queue`]: a connection's bounded outbound queue and its slow-consumer policies.
//! - [`rate`]: a connection's op rate limit.
//! - [`replay`]: the arithmetic of `recovered` for replays.
//! - [`retention`]: whether trimming removed entries a live read never saw.
//! - [`config`]: the configuration file's types and checks.

pub mod channel;
pub mod config;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod http;
pub mod inbound;
pub mod json_guard;
pub mod key;
pub mod op;
pub mod payload;
pub mod queue;
pub mod rate;
pub mod replay;
pub mod resp;
pub mod retention;
pub mod stream_id;
pub mod ws_decode;

pub use error::ErrorCode;
pub use stream_id::StreamId;
