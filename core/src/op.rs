//! Client ops (PROTOCOL.md section 3): parsed, not just validated, so the server
//! acts on types that cannot be wrong.

use std::time::Duration;

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use crate::channel::is_valid_channel;
use crate::error::ProtocolError;
use crate::json_guard;
use crate::{ErrorCode, StreamId};

/// Where a stream subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the first entry added after the subscription took effect.
    Live,
    /// After this id (replay).
    Since(StreamId),
    /// With the newest N retained entries.
    Last(u64),
    /// With the newest entry of each key value among the newest `max_last`.
    Snapshot,
}

/// Fastest and slowest `max_rate` a subscribe may ask for, per second.
pub const MAX_RATE_RANGE: (f64, f64) = (0.001, 1_000_000.0);

/// One op from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Subscribe {
        channel: String,
        start: Start,
        /// `max_rate`, as the least time between two deliveries.
        min_interval: Option<Duration>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping,
    Auth {
        token: String,
    },
    Publish {
        channel: String,
    },
}

/// A parsed op and its `req`, to be echoed in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub req: Option<u64>,
    pub op: Op,
}

/// An op that could not be parsed, with the `req` to echo when it was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub req: Option<u64>,
    pub error: ProtocolError,
}

fn bad(req: Option<u64>, code: ErrorCode, message: impl Into<String>) -> OpError {
    OpError {
        req,
        error: ProtocolError::new(code, message),
    }
}

/// Parses one text message. simd-json parses in place, hence `&mut`.
pub fn parse(text: &mut [u8]) -> Result<Request, OpError> {
    // Before any DOM is built: the DOM recurses per nesting level.
    json_guard::check(text).map_err(|e| bad(None, ErrorCode::BadRequest, e.to_string()))?;
    let value = simd_json::to_borrowed_value(text)
        .map_err(|_| bad(None, ErrorCode::BadRequest, "message is not valid JSON"))?;
    let BorrowedValue::Object(obj) = &value else {
        return Err(bad(None, ErrorCode::BadRequest, "message must be a JSON object"));
    };
    let req = match obj.get("req") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad(None, ErrorCode::BadRequest, "`req` must be an unsigned integer"))?,
        ),
    };
    let op = match obj.get("op") {
        None => return Err(bad(req, ErrorCode::BadRequest, "missing field `op`")),
        Some(v) => v
            .as_str()
            .ok_or_else(|| bad(req, ErrorCode::BadRequest, "`op` must be a string"))?,
    };
    let string_field = |name: &str| -> Result<&str, OpError> {
        match obj.get(name) {
            None => Err(bad(req, ErrorCode::BadRequest, format!("missing field `{name}`"))),
            Some(v) => v
                .as_str()
                .ok_or_else(|| bad(req, ErrorCode::BadRequest, format!("`{name}` must be a string"))),
        }
    };
    let channel_field = || -> Result<String, OpError> {
        let name = string_field("channel")?;
        if is_valid_channel(name) {
            Ok(name.to_owned())
        } else {
            Err(bad(
                req,
                ErrorCode::BadChannel,
                "channel must be 1 to 200 bytes of A-Z a-z 0-9 _ . : @ / -",
            ))
        }
    };
    let op = match op {
        "subscribe" => {
            let channel = channel_field()?;
            let since = match obj.get("since") {
                None => None,
                Some(v) => Some(v.as_str().and_then(|s| s.parse::<StreamId>().ok()).ok_or_else(|| {
                    bad(
                        req,
                        ErrorCode::BadRequest,
                        "`since` must be a stream id like \"1732700000000-0\"",
                    )
                })?),
            };
            let last = match obj.get("last") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or_else(|| bad(req, ErrorCode::BadRequest, "`last` must be an unsigned integer"))?,
                ),
            };
            let snapshot = match obj.get("snapshot") {
                None => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(req, ErrorCode::BadRequest, "`snapshot` must be true or false"))?,
            };
            let start = match (since, last, snapshot) {
                (None, None, false) => Start::Live,
                (Some(id), None, false) => Start::Since(id),
                (None, Some(n), false) => Start::Last(n),
                (None, None, true) => Start::Snapshot,
                _ => {
                    return Err(bad(
                        req,
                        ErrorCode::BadRequest,
                        "only one of `since`, `last` and `snapshot` may be given",
                    ))
                }
            };
            let min_interval = match obj.get("max_rate") {
                None => None,
                Some(v) => Some(v.cast_f64().and_then(min_interval_of).ok_or_else(|| {
                    bad(
                        req,
                        ErrorCode::BadRequest,
                        format!(
                            "`max_rate` must be a number of messages per second from {} to {}",
                            MAX_RATE_RANGE.0, MAX_RATE_RANGE.1
                        ),
                    )
                })?),
            };
            Op::Subscribe {
                channel,
                start,
                min_interval,
            }
        }
        "unsubscribe" => Op::Unsubscribe {
            channel: channel_field()?,
        },
        "ping" => Op::Ping,
        "auth" => Op::Auth {
            token: string_field("token")?.to_owned(),
        },
        "publish" => {
            let channel = channel_field()?;
            if obj.get("data").is_none() {
                return Err(bad(req, ErrorCode::BadRequest, "missing field `data`"));
            }
            Op::Publish { channel }
        }
        other => {
            return Err(bad(
                req,
                ErrorCode::UnknownOp,
                format!("unknown op `{}`", printable(truncate(other, 64))),
            ));
        }
    };
    Ok(Request { req, op })
}

/// The least time between deliveries at `rate` messages per second, when the
/// rate is within [`MAX_RATE_RANGE`].
fn min_interval_of(rate: f64) -> Option<Duration> {
    (rate >= MAX_RATE_RANGE.0 && rate <= MAX_RATE_RANGE.1).then(|| Duration::from_secs_f64(1.0 / rate))
}

/// The `req` of a message, for an error reply to an op that is not handled
/// (rate limited), when it is readable.
pub fn req_of(mut text: Vec<u8>) -> Option<u64> {
    match parse(&mut text) {
        Ok(request) => request.req,
        Err(e) => e.req,
    }
}

/// `s` with control characters (a NUL from `\u0000`, say) shown as U+FFFD, so
/// an echoed name never carries them into a message.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect()
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<Request, OpError> {
        parse(&mut s.as_bytes().to_vec())
    }

    fn code(s: &str) -> (Option<u64>, ErrorCode) {
        let e = p(s).unwrap_err();
        (e.req, e.error.code)
    }

    #[test]
    fn parses_each_op() {
        assert_eq!(
            p(r#"{"op":"subscribe","channel":"md.x","req":4}"#).unwrap(),
            Request {
                req: Some(4),
                op: Op::Subscribe {
                    channel: "md.x".into(),
                    start: Start::Live,
                    min_interval: None
                }
            }
        );
        assert_eq!(
            p(r#"{"op":"subscribe","channel":"md.x","since":"5-1"}"#).unwrap().op,
            Op::Subscribe {
                channel: "md.x".into(),
                start: Start::Since(StreamId::new(5, 1)),
                min_interval: None
            }
        );
        assert_eq!(
            p(r#"{"op":"subscribe","channel":"md.x","last":10}"#).unwrap().op,
            Op::Subscribe {
                channel: "md.x".into(),
                start: Start::Last(10),
                min_interval: None
            }
        );
        assert_eq!(
            p(r#"{"op":"unsubscribe","channel":"a"}"#).unwrap().op,
            Op::Unsubscribe { channel: "a".into() }
        );
        assert_eq!(
            p(r#"{"op":"ping"}"#).unwrap(),
            Request {
                req: None,
                op: Op::Ping
            }
        );
        assert_eq!(
            p(r#"{"op":"auth","token":"t"}"#).unwrap().op,
            Op::Auth { token: "t".into() }
        );
        assert_eq!(
            p(r#"{"op":"publish","channel":"a","data":null}"#).unwrap().op,
            Op::Publish { channel: "a".into() }
        );
    }

    #[test]
    fn maps_each_bad_input_to_its_code() {
        assert_eq!(code("nope"), (None, ErrorCode::BadRequest));
        assert_eq!(code("[1]"), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"op":"ping","req":-1}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"op":"ping","req":"1"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"req":2}"#), (Some(2), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"op":5,"req":2}"#), (Some(2), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"op":"dance","req":3}"#), (Some(3), ErrorCode::UnknownOp));
        assert_eq!(code(r#"{"op":"subscribe","req":3}"#), (Some(3), ErrorCode::BadRequest));
        assert_eq!(code(r#"{"op":"subscribe","channel":7}"#), (None, ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a b"}"#),
            (None, ErrorCode::BadChannel)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channel":""}"#),
            (None, ErrorCode::BadChannel)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a","since":"x"}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a","since":5}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a","last":-1}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a","last":1.5}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channel":"a","last":1,"since":"1-1"}"#),
            (None, ErrorCode::BadRequest)
        );
        assert_eq!(code(r#"{"op":"unsubscribe"}"#), (None, ErrorCode::BadRequest));
        assert_eq!(code(r#"{"op":"publish","channel":"a"}"#), (None, ErrorCode::BadRequest));
    }

    #[test]
    fn parses_snapshot_and_max_rate() {
        assert_eq!(
            p(r#"{"op":"subscribe","channel":"md.x","snapshot":true,"max_rate":4}"#)
                .unwrap()
                .op,
            Op::Subscribe {
                channel: "md.x".into(),
                start: Start::Snapshot,
                min_interval: Some(Duration::from_millis(250)),
            }
        );
        assert_eq!(
            p(r#"{"op":"subscribe","channel":"md.x","snapshot":false,"max_rate":0.5}"#)
                .unwrap()
                .op,
            Op::Subscribe {
                channel: "md.x".into(),
                start: Start::Live,
                min_interval: Some(Duration::from_secs(2)),
            }
        );
        for bad in [
            r#"{"op":"subscribe","channel":"a","snapshot":1}"#,
            r#"{"op":"subscribe","channel":"a","snapshot":true,"last":3}"#,
            r#"{"op":"subscribe","channel":"a","snapshot":true,"since":"1-1"}"#,
            r#"{"op":"subscribe","channel":"a","max_rate":0}"#,
            r#"{"op":"subscribe","channel":"a","max_rate":-3}"#,
            r#"{"op":"subscribe","channel":"a","max_rate":"10"}"#,
            r#"{"op":"subscribe","channel":"a","max_rate":1e300}"#,
            r#"{"op":"subscribe","channel":"a","max_rate":0.0001}"#,
        ] {
            assert_eq!(code(bad), (None, ErrorCode::BadRequest), "{bad}");
        }
    }

    #[test]
    fn req_of_reads_the_req_of_ops_and_of_errors() {
        assert_eq!(req_of(br#"{"op":"ping","req":7}"#.to_vec()), Some(7));
        assert_eq!(req_of(br#"{"op":"dance","req":8}"#.to_vec()), Some(8));
        assert_eq!(req_of(br#"{"op":"ping"}"#.to_vec()), None);
        assert_eq!(req_of(b"nope".to_vec()), None);
    }

    #[test]
    fn unknown_ops_are_echoed_cut_and_printable() {
        let long = format!(r#"{{"op":"{}é"}}"#, "x".repeat(63));
        let e = p(&long).unwrap_err();
        // 63 x's and a 2-byte character do not fit 64 bytes: cut before it.
        assert_eq!(e.error.message, format!("unknown op `{}`", "x".repeat(63)));
        let e = p(r#"{"op":"a\u0000b"}"#).unwrap_err();
        assert_eq!(e.error.message, "unknown op `a\u{FFFD}b`");
    }

    #[test]
    fn deep_nesting_is_refused_without_building_a_dom() {
        // 30,000 levels overflowed a core's stack before the guard.
        let deep = format!(r#"{{"op":"ping","x":{}{}}}"#, "[".repeat(30_000), "]".repeat(30_000));
        assert_eq!(code(&deep), (None, ErrorCode::BadRequest));
        let objects = format!("{}1{}", "{\"a\":".repeat(30_000), "}".repeat(30_000));
        assert_eq!(code(&objects), (None, ErrorCode::BadRequest));
        let fine = format!(r#"{{"op":"ping","x":{}{}}}"#, "[".repeat(31), "]".repeat(31));
        assert_eq!(p(&fine).unwrap().op, Op::Ping);
    }

    #[test]
    fn huge_numbers_and_lone_surrogates_are_bad_requests() {
        for text in [
            r#"{"op":"ping","req":1e400}"#,
            r#"{"op":"ping","req":123456789012345678901234567890}"#,
            r#"{"op":"subscribe","channel":"a","last":99999999999999999999999}"#,
            r#"{"op":"subscribe","channel":"a\ud800"}"#,
            r#"{"op":"dance\udc00"}"#,
        ] {
            assert_eq!(code(text).1, ErrorCode::BadRequest, "{text}");
        }
        let pair = r#"{"op":"ping","x":"\ud83d\ude00"}"#;
        assert_eq!(p(pair).unwrap().op, Op::Ping);
    }

    /// A field as a generated op carries it: absent, well-typed, or mistyped.
    #[derive(Debug, Clone)]
    enum Field<T> {
        Absent,
        Good(T),
        Mistyped(serde_json::Value),
    }

    /// `string`: the field is a string, so a string is not mistyped for it.
    fn field<T: std::fmt::Debug + Clone>(
        good: impl Strategy<Value = T>,
        string: bool,
    ) -> impl Strategy<Value = Field<T>> {
        let other_type = if string {
            serde_json::json!(7)
        } else {
            serde_json::json!("7")
        };
        prop_oneof![
            2 => Just(Field::Absent),
            5 => good.prop_map(Field::Good),
            1 => prop_oneof![
                Just(serde_json::json!(-1)),
                Just(serde_json::json!(1.5)),
                Just(other_type),
                Just(serde_json::json!(null)),
                Just(serde_json::json!([1])),
                Just(serde_json::json!({"a": 1})),
                Just(serde_json::json!(true)),
            ]
            .prop_map(Field::Mistyped),
        ]
    }

    fn put<T: serde::Serialize>(obj: &mut serde_json::Map<String, serde_json::Value>, name: &str, f: &Field<T>) {
        match f {
            Field::Absent => {}
            Field::Good(v) => {
                obj.insert(name.into(), serde_json::to_value(v).unwrap());
            }
            Field::Mistyped(v) => {
                obj.insert(name.into(), v.clone());
            }
        }
    }

    /// Generated ops: valid and near-valid, with ignored extra fields.
    #[derive(Debug, Clone)]
    struct Generated {
        req: Field<u64>,
        op: Field<String>,
        channel: Field<String>,
        since: Field<String>,
        last: Field<u64>,
        token: Field<String>,
        data: bool,
        extra: bool,
    }

    fn generated() -> impl Strategy<Value = Generated> {
        let op = prop_oneof![
            Just("subscribe".to_owned()),
            Just("unsubscribe".to_owned()),
            Just("ping".to_owned()),
            Just("auth".to_owned()),
            Just("publish".to_owned()),
            "[a-z]{1,8}",
        ];
        let channel = prop_oneof!["[A-Za-z0-9_.:@/-]{1,20}", ".{0,5}", "[a-z]{201,210}"];
        let since = prop_oneof!["[0-9]{1,5}-[0-9]{1,3}", "[0-9]{1,5}", ".{0,4}"];
        (
            field(any::<u64>(), false),
            field(op, true),
            field(channel, true),
            field(since, true),
            field(any::<u64>(), false),
            field(".{0,8}", true),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(req, op, channel, since, last, token, data, extra)| Generated {
                req,
                op,
                channel,
                since,
                last,
                token,
                data,
                extra,
            })
    }

    impl Generated {
        fn text(&self) -> String {
            let mut obj = serde_json::Map::new();
            put(&mut obj, "req", &self.req);
            put(&mut obj, "op", &self.op);
            put(&mut obj, "channel", &self.channel);
            put(&mut obj, "since", &self.since);
            put(&mut obj, "last", &self.last);
            put(&mut obj, "token", &self.token);
            if self.data {
                obj.insert("data".into(), serde_json::json!({"px": 1}));
            }
            if self.extra {
                obj.insert("zzz".into(), serde_json::json!([[1], {"a": null}]));
            }
            serde_json::Value::Object(obj).to_string()
        }

        /// What PROTOCOL.md section 3 and docs/protocol.md say the parse gives:
        /// fields checked in the order req, op, channel, then the op's own.
        fn expected(&self) -> Result<Request, (Option<u64>, ErrorCode)> {
            let req = match &self.req {
                Field::Absent => None,
                Field::Good(n) => Some(*n),
                Field::Mistyped(_) => return Err((None, ErrorCode::BadRequest)),
            };
            let bad = |code| Err((req, code));
            let op = match &self.op {
                Field::Good(op) => op.as_str(),
                _ => return bad(ErrorCode::BadRequest),
            };
            let string = |f: &Field<String>| match f {
                Field::Good(s) => Some(s.clone()),
                _ => None,
            };
            let channel = || match &self.channel {
                Field::Good(c) if is_valid_channel(c) => Ok(c.clone()),
                Field::Good(_) => Err((req, ErrorCode::BadChannel)),
                _ => Err((req, ErrorCode::BadRequest)),
            };
            let op = match op {
                "subscribe" => {
                    let channel = channel()?;
                    let since = match &self.since {
                        Field::Absent => None,
                        Field::Good(s) => match s.parse::<StreamId>() {
                            Ok(id) => Some(id),
                            Err(_) => return bad(ErrorCode::BadRequest),
                        },
                        Field::Mistyped(_) => return bad(ErrorCode::BadRequest),
                    };
                    let last = match &self.last {
                        Field::Absent => None,
                        Field::Good(n) => Some(*n),
                        Field::Mistyped(_) => return bad(ErrorCode::BadRequest),
                    };
                    let start = match (since, last) {
                        (None, None) => Start::Live,
                        (Some(id), None) => Start::Since(id),
                        (None, Some(n)) => Start::Last(n),
                        (Some(_), Some(_)) => return bad(ErrorCode::BadRequest),
                    };
                    Op::Subscribe {
                        channel,
                        start,
                        min_interval: None,
                    }
                }
                "unsubscribe" => Op::Unsubscribe { channel: channel()? },
                "ping" => Op::Ping,
                "auth" => match string(&self.token) {
                    Some(token) => Op::Auth { token },
                    None => return bad(ErrorCode::BadRequest),
                },
                "publish" => {
                    let channel = channel()?;
                    if !self.data {
                        return bad(ErrorCode::BadRequest);
                    }
                    Op::Publish { channel }
                }
                _ => return bad(ErrorCode::UnknownOp),
            };
            Ok(Request { req, op })
        }
    }

    proptest! {
        #[test]
        fn structured_ops_parse_as_the_model_says(g in generated()) {
            let text = g.text();
            let got = p(&text).map_err(|e| (e.req, e.error.code));
            prop_assert_eq!(got, g.expected(), "{}", text);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut b = bytes;
            let _ = parse(&mut b);
        }
    }
}
