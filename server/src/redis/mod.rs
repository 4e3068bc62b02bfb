//! Talking to Redis: one RESP3 connection type, the dialer that opens its
//! socket, the supervisor that keeps each link up, and the per-core links built
//! on them (a command pool, a pub/sub connection, a stream reader).

mod conn;
mod dial;
mod fanout;
mod links;
mod pubsub;
mod streams;
mod supervisor;

pub use conn::{LinkError, RespConn};
pub use links::{start, Links};
pub use pubsub::{subscribe as subscribe_pubsub, unsubscribe as unsubscribe_pubsub};
pub use streams::wake_reader;
