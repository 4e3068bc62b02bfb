//! The load payload (`{"seq":N,"t":T,"p":"..."}`) and reading it back out of a
//! delivery frame without a JSON parser (the layout is fixed by PROTOCOL.md).

/// What a delivery carries for the measurement.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    pub channel: &'a [u8],
    /// Per-channel sequence number.
    pub seq: u64,
    /// Intended send time, in nanoseconds since the run's start.
    pub t_ns: u64,
}

/// A JSON payload of about `size` bytes carrying `seq` and the intended send time.
pub fn payload(seq: u64, t_ns: u64, size: usize) -> Vec<u8> {
    let mut out = format!("{{\"seq\":{seq},\"t\":{t_ns},\"p\":\"").into_bytes();
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

/// Reads a delivery `{"ch":c,("id":..,)"data":{"seq":N,"t":T,..}}`.
pub fn parse(text: &[u8]) -> Option<Delivery<'_>> {
    let rest = text.strip_prefix(b"{\"ch\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let channel = &rest[..end];
    let data = memfind(rest, b"\"data\":{")?;
    let body = &rest[data..];
    let (seq, after) = number_after(body, b"\"seq\":")?;
    let (t_ns, _) = number_after(&body[after..], b"\"t\":")?;
    Some(Delivery { channel, seq, t_ns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size_and_are_json() {
        for size in [10, 100, 1024] {
            let p = payload(7, 123, size);
            assert!(p.len() == size || size < 30, "{} vs {size}", p.len());
            serde_json::from_slice::<serde_json::Value>(&p).unwrap();
        }
    }

    #[test]
    fn reads_stream_and_pubsub_deliveries() {
        let p = String::from_utf8(payload(42, 99, 64)).unwrap();
        let stream = format!("{{\"ch\":\"lg.3\",\"id\":\"1-0\",\"data\":{p}}}");
        assert_eq!(
            parse(stream.as_bytes()),
            Some(Delivery {
                channel: b"lg.3",
                seq: 42,
                t_ns: 99
            })
        );
        let pubsub = format!("{{\"ch\":\"ps.lg.0\",\"data\":{p}}}");
        assert_eq!(parse(pubsub.as_bytes()).unwrap().seq, 42);
        assert_eq!(parse(br#"{"type":"subscribed","channel":"x"}"#), None);
    }
}
