//! The load payload (`{"seq":N,"t":T,"sym":"kI","p":"..."}`) and reading it
//! back out of a delivery frame without a JSON parser (the layout is fixed by
//! PROTOCOL.md); `gap` announcements, which are rare, go through serde.

/// The payload field that names the instrument, for servers that conflate by
/// key (`--namespace PREFIX=stream:conflate:sym`).
pub const KEY_FIELD: &str = "sym";

/// A stream id `ms-seq`, as two numbers (cheap to compare, no allocation).
pub type StreamPos = (u64, u64);

/// What a delivery carries for the measurement.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The channel the delivery names.
    pub channel: &'a [u8],
    /// The stream id (stream channels only).
    pub id: Option<StreamPos>,
    /// Per-channel sequence number.
    pub seq: u64,
    /// Intended send time, in nanoseconds since the run's start.
    pub t_ns: u64,
}

/// The key (instrument) index of per-channel sequence number `seq` when the
/// publisher cycles over `keys` instruments.
pub fn key_of(seq: u64, keys: u64) -> u64 {
    seq % keys.max(1)
}

/// A JSON payload of about `size` bytes carrying `seq`, the intended send time
/// and the key `k<seq % keys>` in field [`KEY_FIELD`].
pub fn payload(seq: u64, t_ns: u64, keys: u64, size: usize) -> Vec<u8> {
    let key = key_of(seq, keys);
    let mut out = format!("{{\"seq\":{seq},\"t\":{t_ns},\"{KEY_FIELD}\":\"k{key}\",\"p\":\"").into_bytes();
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
    out
}

fn number_after(text: &[u8], key: &[u8]) -> Option<(u64, usize)> {
    let at = memfind(text, key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    let value = std::str::from_utf8(&text[at..at + digits]).ok()?.parse().ok()?;
    Some((value, at + digits))
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses a stream id `ms-seq`.
pub fn stream_pos(text: &[u8]) -> Option<StreamPos> {
    let text = std::str::from_utf8(text).ok()?;
    let (ms, seq) = text.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Reads a delivery `{"ch":c,("id":..,)"data":{"seq":N,"t":T,..}}`.
pub fn parse(text: &[u8]) -> Option<Delivery<'_>> {
    let rest = text.strip_prefix(b"{\"ch\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let channel = &rest[..end];
    let after_channel = &rest[end..];
    let id = after_channel.strip_prefix(b"\",\"id\":\"").and_then(|s| {
        let close = s.iter().position(|&b| b == b'"')?;
        stream_pos(&s[..close])
    });
    let data = memfind(after_channel, b"\"data\":{")?;
    let body = &after_channel[data..];
    let (seq, after) = number_after(body, b"\"seq\":")?;
    let (t_ns, _) = number_after(&body[after..], b"\"t\":")?;
    Some(Delivery { channel, id, seq, t_ns })
}

/// A `gap` announcement (PROTOCOL.md section 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The channel whose deliveries skip entries.
    pub channel: String,
    /// The id of the last entry delivered before the hole, when given and it
    /// parses (a pub/sub channel has no ids, so its gaps carry none).
    pub after: Option<StreamPos>,
    /// How many entries were skipped, when the server knows.
    pub dropped: Option<u64>,
}

#[derive(serde::Deserialize)]
struct GapMessage {
    #[serde(rename = "type")]
    kind: String,
    channel: String,
    after: Option<String>,
    dropped: Option<u64>,
}

/// Whether `text` is a server message of `type` `kind` (a cheap prefix test;
/// the server writes `type` first).
pub fn is_type(text: &[u8], kind: &str) -> bool {
    text.strip_prefix(b"{\"type\":\"")
        .and_then(|rest| rest.strip_prefix(kind.as_bytes()))
        .is_some_and(|rest| rest.starts_with(b"\""))
}

/// Reads `{"type":"gap","channel":c,"after":id,"dropped":n}` (`after` and
/// `dropped` may be absent); `None` for anything else.
pub fn parse_gap(text: &[u8]) -> Option<Gap> {
    if !is_type(text, "gap") {
        return None;
    }
    let msg: GapMessage = serde_json::from_slice(text).ok()?;
    (msg.kind == "gap").then(|| Gap {
        after: msg.after.as_deref().and_then(|a| stream_pos(a.as_bytes())),
        channel: msg.channel,
        dropped: msg.dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size_and_are_json() {
        for size in [10, 100, 1024] {
            let p = payload(7, 123, 4, size);
            assert!(p.len() == size || size < 40, "{} vs {size}", p.len());
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v[KEY_FIELD], "k3");
            assert_eq!((v["seq"].as_u64(), v["t"].as_u64()), (Some(7), Some(123)));
        }
    }

    #[test]
    fn keys_cycle_over_the_instruments() {
        assert_eq!((0..6).map(|s| key_of(s, 3)).collect::<Vec<_>>(), [0, 1, 2, 0, 1, 2]);
        assert_eq!(key_of(17, 1), 0);
        assert_eq!(key_of(17, 0), 0, "no keys is one key");
    }

    #[test]
    fn reads_stream_and_pubsub_deliveries() {
        let p = String::from_utf8(payload(42, 99, 10, 64)).unwrap();
        let stream = format!("{{\"ch\":\"lg.3\",\"id\":\"1-7\",\"data\":{p}}}");
        assert_eq!(
            parse(stream.as_bytes()),
            Some(Delivery {
                channel: b"lg.3",
                id: Some((1, 7)),
                seq: 42,
                t_ns: 99
            })
        );
        let pubsub = format!("{{\"ch\":\"ps.lg.0\",\"data\":{p}}}");
        let d = parse(pubsub.as_bytes()).unwrap();
        assert_eq!((d.seq, d.t_ns, d.id), (42, 99, None));
        assert_eq!(parse(br#"{"type":"subscribed","channel":"x"}"#), None);
    }

    #[test]
    fn reads_gaps_with_and_without_a_count() {
        let g = parse_gap(br#"{"type":"gap","channel":"lg.0","after":"17-2","dropped":5}"#).unwrap();
        assert_eq!(
            g,
            Gap {
                channel: "lg.0".into(),
                after: Some((17, 2)),
                dropped: Some(5)
            }
        );
        let g = parse_gap(br#"{"type":"gap","channel":"lg.0","after":"0-0"}"#).unwrap();
        assert_eq!((g.after, g.dropped), (Some((0, 0)), None));
        assert_eq!(parse_gap(br#"{"type":"gapped","channel":"a","after":"1-1"}"#), None);
        let pubsub = parse_gap(br#"{"type":"gap","channel":"ps.a","dropped":2}"#).unwrap();
        assert_eq!(
            (pubsub.after, pubsub.dropped),
            (None, Some(2)),
            "pub/sub gaps have no `after`"
        );
        assert_eq!(parse_gap(br#"{"type":"gap","after":"1-1"}"#), None, "no channel");
        assert_eq!(
            parse_gap(br#"{"type":"gap","channel":"a","after":"1-1","dropped":-1}"#),
            None
        );
        assert!(is_type(br#"{"type":"error","code":"x"}"#, "error"));
        assert!(!is_type(br#"{"type":"errors"}"#, "error"));
    }

    #[test]
    fn stream_positions_parse_or_are_refused() {
        assert_eq!(stream_pos(b"1732700000000-3"), Some((1_732_700_000_000, 3)));
        for bad in [&b"12"[..], b"a-1", b"1-", b"-1", b"1-2-3"] {
            assert_eq!(stream_pos(bad), None, "{bad:?}");
        }
    }
}
