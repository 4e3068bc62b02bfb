//! RESP: commands encoded and replies decoded with redis-protocol (RESP3, which
//! also reads RESP2 replies), turned into the types the server acts on.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::decode::complete::decode_bytes_mut;
use redis_protocol::resp3::encode::complete::extend_encode_borrowed;
use redis_protocol::resp3::types::{BorrowedFrame, BytesFrame};

use crate::replay::StreamInfo;
use crate::StreamId;

pub use redis_protocol::resp3::types::BytesFrame as Reply;

/// A reply that does not have the shape its command promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Redis answered with an error.
    #[error("redis error: {0}")]
    Redis(String),
    /// The reply's shape is not what the command returns.
    #[error("unexpected reply shape: {0}")]
    Shape(&'static str),
}

/// The byte stream from Redis is not RESP, or breaks one of the decoder's bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Bytes that are not RESP3 (or RESP2).
    #[error("RESP decode error: {0}")]
    Malformed(String),
    /// Aggregates nested deeper than [`MAX_DEPTH`].
    #[error("RESP frame nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A frame, a string or a declared element count over its bound.
    #[error("RESP frame too large: {0}")]
    TooLarge(&'static str),
}

/// Appends `args` as one command (an array of blob strings).
pub fn encode_command(out: &mut BytesMut, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args
        .iter()
        .map(|a| BorrowedFrame::BlobString {
            data: a,
            attributes: None,
        })
        .collect();
    let frame = BorrowedFrame::Array {
        data: &parts,
        attributes: None,
    };
    // Encoding an array of blob strings into a growable buffer cannot fail.
    let _ = extend_encode_borrowed(out, &frame, false);
}

/// Deepest nesting of aggregates (arrays, maps, sets, pushes) accepted. Redis
/// replies nest a handful of levels; redis-protocol's decoder recurses once per
/// level, so the bound also keeps a hostile peer from overflowing the stack.
pub const MAX_DEPTH: usize = 64;
/// Largest frame accepted (Redis's own `proto-max-bulk-len` default).
pub const MAX_FRAME_BYTES: usize = 512 << 20;
/// Largest element count one aggregate may declare.
pub const MAX_ELEMENTS: u64 = 1 << 24;
/// Longest header or simple-string line.
const MAX_LINE: usize = 64 << 10;

/// Takes replies off a growing buffer, keeping its place in a partial reply.
///
/// redis-protocol's decoder parses a frame from its first byte and gives up
/// when it is incomplete, so feeding it after every read re-parses a large
/// reply once per read: quadratic in the reply's size. This decoder first
/// scans the RESP structure iteratively (no recursion, bounded depth and
/// sizes), remembering how far the scan got between reads, and hands the frame
/// to redis-protocol once, when it is complete.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Offset of the next element header to scan; everything before it
    /// belongs to complete elements of the current frame.
    pos: usize,
    /// Elements still expected by each open aggregate, innermost last.
    open: Vec<u64>,
}

impl Decoder {
    /// A decoder at the start of a frame.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one complete reply off the front of `buf`, or `None` when more
    /// bytes are needed. Call again with the same buffer, grown at its end.
    /// The reply's strings share `buf`'s memory (no copy).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, DecodeError> {
        let Some(len) = self.scan(buf)? else {
            return Ok(None);
        };
        *self = Self::default();
        match decode_bytes_mut(buf) {
            Ok(Some((frame, used, _))) if used == len => Ok(Some(frame)),
            Ok(Some((_, used, _))) => Err(DecodeError::Malformed(format!(
                "scanned a {len}-byte frame, decoded {used} bytes"
            ))),
            Ok(None) => Err(DecodeError::Malformed(format!(
                "scanned a complete {len}-byte frame the decoder finds incomplete"
            ))),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        }
    }

    /// Scans from where the last call stopped; `Some(len)` once the first
    /// frame of `buf` is complete. Hot path on large replies: each byte of a
    /// header is looked at once, a blob string's body not at all.
    fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        loop {
            if self.pos > MAX_FRAME_BYTES {
                return Err(DecodeError::TooLarge("frame over 512 MiB"));
            }
            let rest = &buf[self.pos..];
            let Some(&kind) = rest.first() else {
                return Ok(None);
            };
            let Some(eol) = find_crlf(&rest[1..]) else {
                if rest.len() > MAX_LINE {
                    return Err(DecodeError::TooLarge("line over 64 KiB"));
                }
                return Ok(None);
            };
            let line = &rest[1..1 + eol];
            let body = self.pos + 1 + eol + 2;
            let mut children = 0u64;
            let next = match kind {
                b'+' | b'-' | b':' | b',' | b'(' | b'#' | b'_' => body,
                b'$' | b'!' | b'=' => {
                    let n = usize::try_from(length(line)?).map_err(|_| DecodeError::TooLarge("blob length"))?;
                    if n > MAX_FRAME_BYTES {
                        return Err(DecodeError::TooLarge("blob over 512 MiB"));
                    }
                    let end = body + n;
                    if buf.len() < end + 2 {
                        // Stay at the header: it is re-read (a few bytes) once
                        // more bytes came, the body never is.
                        return Ok(None);
                    }
                    if &buf[end..end + 2] != b"\r\n" {
                        return Err(DecodeError::Malformed("blob without CRLF".into()));
                    }
                    end + 2
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = length(line)?;
                    if n > MAX_ELEMENTS {
                        return Err(DecodeError::TooLarge("aggregate length"));
                    }
                    children = match kind {
                        b'%' => 2 * n,
                        // An attribute's pairs come before the frame they describe.
                        b'|' => 2 * n + 1,
                        _ => n,
                    };
                    body
                }
                other => {
                    return Err(DecodeError::Malformed(format!(
                        "unexpected type byte {:?}",
                        char::from(other)
                    )))
                }
            };
            self.pos = next;
            if children > 0 {
                if self.open.len() >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                self.open.push(children);
                continue;
            }
            // One element is complete: close every aggregate it completes.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(left) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    Some(_) => {
                        self.open.pop();
                    }
                }
            }
        }
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    let limit = bytes.len().min(MAX_LINE + 1);
    bytes[..limit].windows(2).position(|w| w == b"\r\n")
}

/// A header's length. RESP2 nulls (`-1`) and RESP3 streamed aggregates (`?`)
/// are refused, as redis-protocol's RESP3 decoder refuses them: feedgate
/// speaks RESP3 (`HELLO 3`), where Redis sends neither.
fn length(line: &[u8]) -> Result<u64, DecodeError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| DecodeError::Malformed(format!("bad length {:?}", String::from_utf8_lossy(line))))
}

/// Takes one complete reply off the front of `buf`, or `None` when more bytes
/// are needed. One-shot: a reader that calls again as bytes arrive should keep
/// a [`Decoder`], which does not re-scan what it has seen.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Reply>, DecodeError> {
    Decoder::new().decode(buf)
}

/// The text of an error reply, if `frame` is one.
pub fn error_text(frame: &Reply) -> Option<String> {
    match frame {
        BytesFrame::SimpleError { data, .. } => Some(data.to_string()),
        BytesFrame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

fn check_error(frame: &Reply) -> Result<(), ReplyError> {
    match error_text(frame) {
        Some(text) => Err(ReplyError::Redis(text)),
        None => Ok(()),
    }
}

fn bytes_of(frame: &Reply) -> Option<&Bytes> {
    match frame {
        BytesFrame::BlobString { data, .. }
        | BytesFrame::SimpleString { data, .. }
        | BytesFrame::VerbatimString { data, .. } => Some(data),
        _ => None,
    }
}

fn stream_id_of(frame: &Reply) -> Result<StreamId, ReplyError> {
    bytes_of(frame)
        .and_then(|b| StreamId::parse(b).ok())
        .ok_or(ReplyError::Shape("stream id"))
}

fn integer_of(frame: &Reply) -> Result<i64, ReplyError> {
    match frame {
        BytesFrame::Number { data, .. } => Ok(*data),
        other => bytes_of(other)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
            .ok_or(ReplyError::Shape("integer")),
    }
}

/// A reply's `OK` or integer, for commands whose answer is only success.
pub fn expect_ok(frame: &Reply) -> Result<(), ReplyError> {
    check_error(frame)
}

/// The integer of an integer reply.
pub fn integer(frame: &Reply) -> Result<i64, ReplyError> {
    check_error(frame)?;
    integer_of(frame)
}

/// One stream entry: its id and its fields in entry order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: StreamId,
    pub fields: Vec<(Bytes, Bytes)>,
}

fn entry(frame: Reply) -> Result<Entry, ReplyError> {
    let BytesFrame::Array { data, .. } = frame else {
        return Err(ReplyError::Shape("entry"));
    };
    let [id, fields]: [Reply; 2] = data.try_into().map_err(|_| ReplyError::Shape("entry"))?;
    let id = stream_id_of(&id)?;
    let fields = match fields {
        BytesFrame::Array { data, .. } => data,
        // An entry whose fields were deleted comes back as nil from some versions.
        BytesFrame::Null => Vec::new(),
        _ => return Err(ReplyError::Shape("entry fields")),
    };
    if fields.len() % 2 != 0 {
        return Err(ReplyError::Shape("odd field count"));
    }
    let mut pairs = Vec::with_capacity(fields.len() / 2);
    let mut iter = fields.into_iter();
    while let (Some(name), Some(value)) = (iter.next(), iter.next()) {
        let name = bytes_of(&name).ok_or(ReplyError::Shape("field name"))?.clone();
        let value = bytes_of(&value).ok_or(ReplyError::Shape("field value"))?.clone();
        pairs.push((name, value));
    }
    Ok(Entry { id, fields: pairs })
}

/// The entries of an XRANGE or XREVRANGE reply, in reply order.
pub fn entries(frame: Reply) -> Result<Vec<Entry>, ReplyError> {
    check_error(&frame)?;
    match frame {
        BytesFrame::Array { data, .. } => data.into_iter().map(entry).collect(),
        BytesFrame::Null => Ok(Vec::new()),
        _ => Err(ReplyError::Shape("entry list")),
    }
}

/// The entries of an XREAD reply, per stream key. A timed-out XREAD BLOCK
/// (nil) gives none.
//= https://redis.io/docs/latest/commands/xread/
//# the command returns an array of results: each element of the returned array
//# is an array composed of two elements containing the key name and the entries
//# reported for that key (RESP2); RESP3 returns a map of key to entries.
pub fn xread(frame: Reply) -> Result<Vec<(Bytes, Vec<Entry>)>, ReplyError> {
    check_error(&frame)?;
    match frame {
        BytesFrame::Null => Ok(Vec::new()),
        BytesFrame::Map { data, .. } => data
            .into_iter()
            .map(|(key, list)| {
                let key = bytes_of(&key).ok_or(ReplyError::Shape("stream key"))?.clone();
                Ok((key, entries(list)?))
            })
            .collect(),
        BytesFrame::Array { data, .. } => data
            .into_iter()
            .map(|pair| {
                let BytesFrame::Array { data, .. } = pair else {
                    return Err(ReplyError::Shape("xread stream"));
                };
                let [key, list]: [Reply; 2] = data.try_into().map_err(|_| ReplyError::Shape("xread stream"))?;
                let key = bytes_of(&key).ok_or(ReplyError::Shape("stream key"))?.clone();
                Ok((key, entries(list)?))
            })
            .collect(),
        _ => Err(ReplyError::Shape("xread reply")),
    }
}

/// The fields of XINFO STREAM that decide `recovered`.
pub fn stream_info(frame: Reply) -> Result<StreamInfo, ReplyError> {
    check_error(&frame)?;
    let pairs: Vec<(Reply, Reply)> = match frame {
        BytesFrame::Map { data, .. } => data.into_iter().collect(),
        BytesFrame::Array { data, .. } => {
            let mut iter = data.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        _ => return Err(ReplyError::Shape("xinfo reply")),
    };
    let mut info = StreamInfo::default();
    let mut seen_added = false;
    for (key, value) in pairs {
        let Some(key) = bytes_of(&key) else { continue };
        match key.as_ref() {
            b"length" => info.length = integer_of(&value)?.max(0) as u64,
            b"last-generated-id" => info.last_generated_id = stream_id_of(&value)?,
            b"max-deleted-entry-id" => info.max_deleted_id = stream_id_of(&value)?,
            b"entries-added" => {
                info.entries_added = integer_of(&value)?.max(0) as u64;
                seen_added = true;
            }
            b"first-entry" => {
                info.first_entry = match value {
                    BytesFrame::Null => None,
                    other => Some(entry(other)?.id),
                }
            }
            _ => {}
        }
    }
    if !seen_added {
        // Before Redis 7.0 nothing records removals: never claim recovery.
        info.entries_added = u64::MAX;
        info.max_deleted_id = StreamId::new(u64::MAX, u64::MAX);
    }
    Ok(info)
}

/// An out-of-band message on a subscribed connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A published message.
    Message { channel: Bytes, body: Bytes },
    /// Confirmation of SUBSCRIBE for one channel.
    Subscribed { channel: Bytes },
    /// Confirmation of UNSUBSCRIBE for one channel.
    Unsubscribed { channel: Bytes },
    /// Anything else (pattern messages, invalidations).
    Other,
}

/// Reads a pub/sub push; `None` when `frame` is not a push (a command reply).
pub fn push(frame: &Reply) -> Option<Push> {
    let BytesFrame::Push { data, .. } = frame else {
        return None;
    };
    let kind = data.first().and_then(bytes_of)?;
    let arg = |i: usize| data.get(i).and_then(bytes_of).cloned();
    Some(match kind.as_ref() {
        b"message" => match (arg(1), arg(2)) {
            (Some(channel), Some(body)) => Push::Message { channel, body },
            _ => Push::Other,
        },
        b"subscribe" => arg(1).map_or(Push::Other, |channel| Push::Subscribed { channel }),
        b"unsubscribe" => arg(1).map_or(Push::Other, |channel| Push::Unsubscribed { channel }),
        _ => Push::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(raw: &[u8]) -> Reply {
        let mut buf = BytesMut::from(raw);
        let frame = decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    }

    fn scan_all(raw: &[u8]) -> Result<Option<Reply>, DecodeError> {
        Decoder::new().decode(&mut BytesMut::from(raw))
    }

    #[test]
    fn declared_sizes_at_the_bounds_wait_and_past_them_fail() {
        let at = |kind: &str, n: u64| format!("{kind}{n}\r\n").into_bytes();
        assert!(matches!(scan_all(&at("$", MAX_FRAME_BYTES as u64)), Ok(None)));
        assert!(matches!(
            scan_all(&at("$", MAX_FRAME_BYTES as u64 + 1)),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(matches!(scan_all(&at("*", MAX_ELEMENTS)), Ok(None)));
        assert!(matches!(
            scan_all(&at("*", MAX_ELEMENTS + 1)),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn lines_up_to_the_bound_are_read_and_longer_ones_fail() {
        let mut line = vec![b'+'];
        line.extend(std::iter::repeat_n(b'a', MAX_LINE - 1));
        // Incomplete but within the bound: wait for more.
        assert!(matches!(scan_all(&line), Ok(None)));
        let mut whole = line.clone();
        whole.extend_from_slice(b"\r\n");
        let Ok(Some(BytesFrame::SimpleString { data, .. })) = scan_all(&whole) else {
            panic!("a {}-byte line decodes", MAX_LINE - 1);
        };
        assert_eq!(data.len(), MAX_LINE - 1);
        line.extend_from_slice(b"aa");
        assert!(matches!(scan_all(&line), Err(DecodeError::TooLarge(_))));
    }

    #[test]
    fn attributes_are_scanned_with_the_frame_they_describe() {
        let raw = b"|1\r\n+key\r\n+val\r\n+OK\r\n";
        let mut buf = BytesMut::from(&raw[..]);
        let frame = Decoder::new().decode(&mut buf).unwrap().expect("complete");
        assert!(buf.is_empty(), "the whole attributed frame is consumed");
        assert!(matches!(frame, BytesFrame::SimpleString { .. }));
        // Two pairs: 2 * n + 1 elements, which no other arithmetic gives for n = 2.
        let raw = b"|2\r\n+a\r\n+b\r\n+c\r\n+d\r\n:7\r\n";
        let mut buf = BytesMut::from(&raw[..]);
        let frame = Decoder::new().decode(&mut buf).unwrap().expect("complete");
        assert!(buf.is_empty());
        assert!(matches!(frame, BytesFrame::Number { data: 7, .. }));
    }

    #[test]
    fn errors_of_both_kinds_are_read_and_reported() {
        assert_eq!(error_text(&one(b"-ERR no\r\n")).as_deref(), Some("ERR no"));
        assert_eq!(error_text(&one(b"!6\r\nERR no\r\n")).as_deref(), Some("ERR no"));
        assert_eq!(error_text(&one(b"+OK\r\n")), None);
        assert_eq!(expect_ok(&one(b"+OK\r\n")), Ok(()));
        assert_eq!(
            expect_ok(&one(b"-NOPERM x\r\n")),
            Err(ReplyError::Redis("NOPERM x".into()))
        );
        assert_eq!(integer(&one(b":42\r\n")), Ok(42));
        assert_eq!(integer(&one(b"$2\r\n-7\r\n")), Ok(-7));
        assert!(integer(&one(b"-ERR x\r\n")).is_err());
        assert!(integer(&one(b"+nope\r\n")).is_err());
    }

    #[test]
    fn entries_with_nil_fields_and_nil_lists_are_empty() {
        let raw = b"*1\r\n*2\r\n$3\r\n1-1\r\n_\r\n";
        let list = entries(one(raw)).unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].fields.is_empty());
        assert!(entries(one(b"_\r\n")).unwrap().is_empty());
    }

    #[test]
    fn xinfo_stream_reads_resp2_arrays_and_deletions() {
        let raw = b"*8\r\n$6\r\nlength\r\n:1\r\n$20\r\nmax-deleted-entry-id\r\n$3\r\n3-0\r\n$13\r\nentries-added\r\n:4\r\n$11\r\nfirst-entry\r\n_\r\n";
        let info = stream_info(one(raw)).unwrap();
        assert_eq!(info.length, 1);
        assert_eq!(info.max_deleted_id, StreamId::new(3, 0));
        assert_eq!(info.entries_added, 4);
        assert_eq!(info.first_entry, None);
    }

    #[test]
    fn unsubscribe_pushes_name_their_channel() {
        let raw = b">3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n";
        assert_eq!(
            push(&one(raw)),
            Some(Push::Unsubscribed {
                channel: Bytes::from_static(b"ch")
            })
        );
    }

    #[test]
    fn encodes_commands_as_blob_arrays() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[b"XADD", b"s", b"*", b"data", b"{}"]);
        assert_eq!(
            &out[..],
            b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$4\r\ndata\r\n$2\r\n{}\r\n"
        );
    }

    #[test]
    fn waits_for_a_complete_reply() {
        let mut buf = BytesMut::from(&b"*2\r\n$1\r\na"[..]);
        assert!(decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 9, "nothing consumed until complete");
    }

    #[test]
    fn decodes_a_resp3_xread_map() {
        let raw = b"%1\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\ndata\r\n$1\r\n1\r\n*2\r\n$3\r\n2-5\r\n*4\r\n$2\r\npx\r\n$1\r\n1\r\n$1\r\nq\r\n$1\r\n2\r\n";
        let streams = xread(one(raw)).unwrap();
        assert_eq!(streams.len(), 1);
        let (key, entries) = &streams[0];
        assert_eq!(&key[..], b"s");
        assert_eq!(entries[0].id, StreamId::new(1, 0));
        assert_eq!(entries[1].id, StreamId::new(2, 5));
        assert_eq!(entries[1].fields.len(), 2);
        assert_eq!(&entries[1].fields[1].0[..], b"q");
    }

    #[test]
    fn decodes_a_resp2_xread_array_and_nil() {
        let raw = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n7-1\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n";
        assert_eq!(xread(one(raw)).unwrap()[0].1[0].id, StreamId::new(7, 1));
        assert!(xread(one(b"_\r\n")).unwrap().is_empty());
    }

    #[test]
    fn reports_errors_and_bad_shapes() {
        assert_eq!(
            xread(one(b"-WRONGTYPE bad\r\n")).unwrap_err(),
            ReplyError::Redis("WRONGTYPE bad".into())
        );
        assert!(entries(one(b":1\r\n")).is_err());
        assert!(entries(one(b"*1\r\n*2\r\n$3\r\nxx0\r\n*0\r\n")).is_err());
    }

    #[test]
    fn decodes_pushes() {
        let raw = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n";
        assert_eq!(
            push(&one(raw)),
            Some(Push::Message {
                channel: Bytes::from_static(b"ch"),
                body: Bytes::from_static(b"hi")
            })
        );
        let raw = b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
        assert_eq!(
            push(&one(raw)),
            Some(Push::Subscribed {
                channel: Bytes::from_static(b"ch")
            })
        );
        assert_eq!(push(&one(b"+OK\r\n")), None);
    }

    #[test]
    fn decodes_xinfo_stream() {
        let raw = b"%5\r\n$6\r\nlength\r\n:2\r\n$17\r\nlast-generated-id\r\n$3\r\n5-0\r\n$20\r\nmax-deleted-entry-id\r\n$3\r\n0-0\r\n$13\r\nentries-added\r\n:5\r\n$11\r\nfirst-entry\r\n*2\r\n$3\r\n4-0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n";
        let info = stream_info(one(raw)).unwrap();
        assert_eq!(info.length, 2);
        assert_eq!(info.entries_added, 5);
        assert_eq!(info.first_entry, Some(StreamId::new(4, 0)));
        assert_eq!(info.last_generated_id, StreamId::new(5, 0));
    }

    /// Feeds `raw` in pieces of `step` bytes; returns the frames decoded.
    fn feed(raw: &[u8], step: usize) -> Result<Vec<Reply>, DecodeError> {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for piece in raw.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(frame) = decoder.decode(&mut buf)? {
                frames.push(frame);
            }
        }
        assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
        Ok(frames)
    }

    #[test]
    fn decodes_frames_split_at_every_byte() {
        let raw: &[u8] = b"%1\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$4\r\ndata\r\n$1\r\n1\r\n*2\r\n$3\r\n2-5\r\n*0\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n+OK\r\n_\r\n$0\r\n\r\n~0\r\n:12\r\n";
        let whole = feed(raw, raw.len()).unwrap();
        assert_eq!(whole.len(), 7);
        for step in 1..raw.len() {
            assert_eq!(feed(raw, step).unwrap(), whole, "split every {step} bytes");
        }
        assert_eq!(xread(whole[0].clone()).unwrap()[0].1[1].id, StreamId::new(2, 5));
    }

    #[test]
    fn keeps_its_place_in_a_partial_frame() {
        let mut raw = b"*1000\r\n".to_vec();
        for i in 0..1000 {
            raw.extend_from_slice(format!("$4\r\n{i:04}\r\n").as_bytes());
        }
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::from(&raw[..raw.len() / 2]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert!(decoder.pos > raw.len() / 2 - 16, "scan stopped at {}", decoder.pos);
        assert_eq!(buf.len(), raw.len() / 2, "nothing consumed until complete");
        buf.extend_from_slice(&raw[raw.len() / 2..]);
        let Some(Reply::Array { data, .. }) = decoder.decode(&mut buf).unwrap() else {
            panic!("expected the array")
        };
        assert_eq!(data.len(), 1000);
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_nesting_past_the_depth_bound() {
        let ok = format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH));
        assert!(feed(ok.as_bytes(), 7).unwrap().len() == 1);
        // Far deeper than any stack would take if decoded recursively.
        let deep = "*1\r\n".repeat(1_000_000);
        let mut buf = BytesMut::from(deep.as_bytes());
        assert_eq!(Decoder::new().decode(&mut buf), Err(DecodeError::TooDeep));
        let mut buf = BytesMut::from(format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH + 1)).as_bytes());
        assert_eq!(Decoder::new().decode(&mut buf), Err(DecodeError::TooDeep));
    }

    #[test]
    fn refuses_declared_sizes_past_their_bounds_without_allocating() {
        for raw in [
            "$600000000\r\n".to_owned(),
            format!("*{}\r\n", MAX_ELEMENTS + 1),
            format!("%{}\r\n", u64::MAX),
            format!("+{}", "x".repeat(MAX_LINE + 10)),
        ] {
            let mut buf = BytesMut::from(raw.as_bytes());
            assert!(
                matches!(Decoder::new().decode(&mut buf), Err(DecodeError::TooLarge(_))),
                "{:.40}",
                raw
            );
        }
        // A declared length within bounds but not (yet) present is just incomplete.
        let mut buf = BytesMut::from(&b"*16000000\r\n:1\r\n"[..]);
        assert_eq!(Decoder::new().decode(&mut buf), Ok(None));
    }

    #[test]
    fn refuses_bytes_that_are_not_resp() {
        for raw in [
            &b"hello\r\n"[..],
            b"$3\r\nabcd\r\n",
            b"*x\r\n",
            b"$?\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            assert!(
                matches!(Decoder::new().decode(&mut buf), Err(DecodeError::Malformed(_))),
                "{raw:?}"
            );
        }
    }
}
