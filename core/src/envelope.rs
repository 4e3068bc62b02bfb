//! The JSON envelopes the server sends (PROTOCOL.md section 3), keys in the
//! documented order. `req` is present only when the client's op carried one.

use crate::payload::write_json_string;
use crate::{ErrorCode, StreamId};

/// Where a stream subscription's deliveries start, for `subscribed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    pub position: StreamId,
    pub recovered: bool,
}

fn open(kind: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');
    out
}

fn channel(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"channel\":");
    write_json_string(out, name.as_bytes());
}

fn req(out: &mut Vec<u8>, req: Option<u64>) {
    if let Some(n) = req {
        out.extend_from_slice(b",\"req\":");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
}

/// `{"type":"subscribed","channel":c,"req":n,"position":..,"recovered":..}`;
/// `position` and `recovered` only for stream channels.
pub fn subscribed(name: &str, req_id: Option<u64>, start: Option<StreamStart>) -> Vec<u8> {
    let mut out = open("subscribed");
    channel(&mut out, name);
    req(&mut out, req_id);
    if let Some(start) = start {
        out.extend_from_slice(b",\"position\":\"");
        start.position.write_to(&mut out);
        out.extend_from_slice(if start.recovered {
            b"\",\"recovered\":true"
        } else {
            b"\",\"recovered\":false"
        });
    }
    out.push(b'}');
    out
}

/// `{"type":"gap","channel":c,"after":id,"dropped":n}` (PROTOCOL.md section
/// 6): deliveries of `name` skipped entries after `after`; `dropped` where the
/// count is known. A pub/sub channel has no ids: its gap carries no `after`.
pub fn gap(name: &str, after: Option<StreamId>, dropped: Option<u64>) -> Vec<u8> {
    let mut out = open("gap");
    channel(&mut out, name);
    if let Some(after) = after {
        out.extend_from_slice(b",\"after\":\"");
        after.write_to(&mut out);
        out.push(b'"');
    }
    if let Some(n) = dropped {
        out.extend_from_slice(b",\"dropped\":");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    out.push(b'}');
    out
}

/// `{"type":"unsubscribed","channel":c,"req":n}`.
pub fn unsubscribed(name: &str, req_id: Option<u64>) -> Vec<u8> {
    let mut out = open("unsubscribed");
    channel(&mut out, name);
    req(&mut out, req_id);
    out.push(b'}');
    out
}

/// `{"type":"pong","req":n}`.
pub fn pong(req_id: Option<u64>) -> Vec<u8> {
    simple("pong", req_id)
}

/// `{"type":"authed","req":n}`.
pub fn authed(req_id: Option<u64>) -> Vec<u8> {
    simple("authed", req_id)
}

fn simple(kind: &str, req_id: Option<u64>) -> Vec<u8> {
    let mut out = open(kind);
    req(&mut out, req_id);
    out.push(b'}');
    out
}

/// `{"type":"error","code":..,"message":..,"req":n}`.
pub fn error(code: ErrorCode, message: &str, req_id: Option<u64>) -> Vec<u8> {
    let mut out = open("error");
    out.extend_from_slice(b",\"code\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    write_json_string(&mut out, message.as_bytes());
    req(&mut out, req_id);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn subscribed_stream_has_position_and_recovered() {
        let start = StreamStart {
            position: StreamId::new(5, 1),
            recovered: false,
        };
        assert_eq!(
            s(subscribed("md.x", Some(3), Some(start))),
            r#"{"type":"subscribed","channel":"md.x","req":3,"position":"5-1","recovered":false}"#
        );
    }

    #[test]
    fn gap_names_the_last_delivered_id_and_the_count_where_known() {
        assert_eq!(
            s(gap("md.x", Some(StreamId::new(7, 2)), Some(3))),
            r#"{"type":"gap","channel":"md.x","after":"7-2","dropped":3}"#
        );
        assert_eq!(
            s(gap("md.x", Some(StreamId::new(7, 2)), None)),
            r#"{"type":"gap","channel":"md.x","after":"7-2"}"#
        );
        assert_eq!(
            s(gap("ps.x", None, Some(1))),
            r#"{"type":"gap","channel":"ps.x","dropped":1}"#
        );
    }

    #[test]
    fn subscribed_pubsub_has_neither() {
        assert_eq!(
            s(subscribed("ps.x", None, None)),
            r#"{"type":"subscribed","channel":"ps.x"}"#
        );
    }

    #[test]
    fn error_escapes_its_message() {
        assert_eq!(
            s(error(ErrorCode::BadRequest, "bad \"x\"", Some(7))),
            r#"{"type":"error","code":"bad_request","message":"bad \"x\"","req":7}"#
        );
    }

    #[test]
    fn replies_are_json() {
        for v in [pong(Some(1)), authed(None), unsubscribed("a", Some(u64::MAX))] {
            serde_json::from_slice::<serde_json::Value>(&v).unwrap();
        }
    }
}
