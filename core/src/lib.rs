//! feedgate's sans-I/O core: everything that can be decided without a socket.
//!
//! - [`channel`]: channel names (PROTOCOL.md section 1) and namespaces.
//! - [`stream_id`]: Redis stream ids, parsed and compared.
//! - [`payload`]: the payload rules of PROTOCOL.md section 2.
//! - [`frame`]: server-to-client WebSocket frames, built once into `Bytes`.
//! - [`envelope`]: the JSON of deliveries, replies and errors.
//! - [`op`]: parsing client ops into [`op::Op`].
//! - [`error`]: protocol error codes and the crate's error type.
//! - [`resp`]: RESP commands and the decoding of Redis replies.
//! - [`queue`]: a connection's bounded outbound queue.
//! - [`replay`]: the arithmetic of `recovered` for replays.
//! - [`config`]: the configuration file's types and checks.

pub mod channel;
pub mod config;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod op;
pub mod payload;
pub mod queue;
pub mod replay;
pub mod resp;
pub mod stream_id;

pub use error::ErrorCode;
pub use stream_id::StreamId;
