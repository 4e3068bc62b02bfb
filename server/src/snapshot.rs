//! `snapshot: true`: the newest entry of each key value among the newest
//! `max_last` entries, in id order, then live (PROTOCOL.md section 6).

use std::rc::Rc;

use feedgate_core::error::ProtocolError;
use feedgate_core::{ErrorCode, StreamId};

use crate::conn::Conn;
use crate::core::Core;

/// Sends the snapshot of `name` up to `until`; returns the id after which held
/// live frames are released, and `recovered`.
pub async fn replay_snapshot(
    _core: &Rc<Core>,
    _conn: &Rc<Conn>,
    _req: Option<u64>,
    _name: &str,
    _key: &[u8],
    _until: StreamId,
) -> Result<(StreamId, bool), ProtocolError> {
    Err(ProtocolError::new(ErrorCode::Internal, "snapshot is being built"))
}
