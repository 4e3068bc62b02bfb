//! Talking to Redis: one RESP3 connection type and the per-core links built
//! on it (a command pool, a pub/sub connection, a stream reader).

mod conn;
mod links;
mod pubsub;
mod streams;

pub use conn::{LinkError, RespConn};
pub use links::{start, Links};
pub use pubsub::{subscribe as subscribe_pubsub, unsubscribe as unsubscribe_pubsub};
pub use streams::wake_reader;
