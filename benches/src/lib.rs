//! Inputs shared by the criterion benches in `benches/benches/`: built once,
//! outside the timed code, and checked by the tests below so a bench never
//! measures an error path by accident.

use bytes::Bytes;
use feedgate_core::StreamId;

/// The channel every bench delivers on.
pub const CHANNEL: &str = "md.BTC-USD";

/// A 103-byte JSON payload, the `data` of a typical market-data entry.
pub const JSON_100B: &[u8] =
    br#"{"sym":"BTC-USD","px":101234.5,"qty":0.25,"side":"buy","ts":1732700000000123,"venue":"XNAS","seq":4242}"#;

/// A JSON payload of about 1 KiB (an order-book snapshot of 30 levels), for
/// frames whose payload is many times the envelope.
pub fn json_1kib() -> Vec<u8> {
    let levels: Vec<String> = (0..30)
        .map(|i| format!(r#"{{"px":{}.5,"qty":{}.25,"n":{}}}"#, 101_000 + i, i + 1, i * 3))
        .collect();
    format!(
        r#"{{"sym":"BTC-USD","ts":1732700000000123,"bids":[{}],"asks":[{}]}}"#,
        levels[..15].join(","),
        levels[15..].join(",")
    )
    .into_bytes()
}

/// A subscribe op with a replay position and a `req`, as a client sends it.
pub const SUBSCRIBE_SINCE: &[u8] = br#"{"op":"subscribe","channel":"md.BTC-USD","since":"1732700000000-0","req":7}"#;

/// The id of the `i`-th entry of the fixtures: realistic millisecond times.
pub fn entry_id(i: u64) -> StreamId {
    StreamId::new(1_732_700_000_000 + i, i % 3)
}

/// A stream entry whose only field is `data` holding [`JSON_100B`] (spliced).
pub fn data_entry() -> Vec<(Bytes, Bytes)> {
    vec![(Bytes::from_static(b"data"), Bytes::from_static(JSON_100B))]
}

/// A stream entry whose only field is `data` holding [`json_1kib`] (spliced).
pub fn data_entry_1kib() -> Vec<(Bytes, Bytes)> {
    vec![(Bytes::from_static(b"data"), Bytes::from(json_1kib()))]
}

/// A stream entry of six plain fields of about 170 bytes each (about 1 KiB,
/// sent as a JSON object of strings: no JSON check).
pub fn multi_field_entry_1kib() -> Vec<(Bytes, Bytes)> {
    ["sym", "px", "qty", "side", "ts", "venue"]
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            (
                Bytes::from_static(k.as_bytes()),
                Bytes::from(format!("{i}-{}", "x".repeat(168))),
            )
        })
        .collect()
}

/// A stream entry of six plain fields (sent as a JSON object of strings).
pub fn multi_field_entry() -> Vec<(Bytes, Bytes)> {
    [
        ("sym", "BTC-USD"),
        ("px", "101234.5"),
        ("qty", "0.25"),
        ("side", "buy"),
        ("ts", "1732700000000123"),
        ("venue", "XNAS"),
    ]
    .into_iter()
    .map(|(k, v)| (Bytes::from_static(k.as_bytes()), Bytes::from_static(v.as_bytes())))
    .collect()
}

fn blob(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(data.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The RESP3 reply of `XREAD STREAMS <CHANNEL> ...` holding `n` entries, each
/// `[id, ["data", JSON_100B]]`: a map of one stream key to its entry list.
pub fn xread_reply(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + n as usize * (JSON_100B.len() + 48));
    out.extend_from_slice(b"%1\r\n");
    blob(&mut out, CHANNEL.as_bytes());
    out.extend_from_slice(format!("*{n}\r\n").as_bytes());
    for i in 0..n {
        out.extend_from_slice(b"*2\r\n");
        blob(&mut out, entry_id(i).to_string().as_bytes());
        out.extend_from_slice(b"*2\r\n");
        blob(&mut out, b"data");
        blob(&mut out, JSON_100B);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use feedgate_core::frame::{body, FrameBuilder};
    use feedgate_core::op::{self, Op, Start};
    use feedgate_core::resp;

    #[test]
    fn the_json_payload_is_spliced_not_escaped() {
        assert!((90..=110).contains(&JSON_100B.len()));
        let f = FrameBuilder::new().stream_delivery(CHANNEL, entry_id(0), &data_entry());
        let mut expected = br#"{"ch":"md.BTC-USD","id":"1732700000000-0","data":"#.to_vec();
        expected.extend_from_slice(JSON_100B);
        expected.push(b'}');
        assert_eq!(body(&f), &expected[..]);
    }

    #[test]
    fn the_1kib_payload_is_json_of_about_1kib() {
        let json = json_1kib();
        assert!((900..=1100).contains(&json.len()), "{}", json.len());
        let f = FrameBuilder::new().stream_delivery(CHANNEL, entry_id(0), &data_entry_1kib());
        assert!(body(&f).ends_with(&[&json[..], b"}"].concat()), "spliced, not escaped");
    }

    #[test]
    fn the_multi_field_entry_becomes_an_object() {
        let f = FrameBuilder::new().stream_delivery(CHANNEL, entry_id(1), &multi_field_entry());
        assert!(body(&f).ends_with(br#""data":{"sym":"BTC-USD","px":"101234.5","qty":"0.25","side":"buy","ts":"1732700000000123","venue":"XNAS"}}"#));
    }

    #[test]
    fn the_xread_reply_decodes_to_its_entries() {
        let mut buf = BytesMut::from(&xread_reply(100)[..]);
        let frame = resp::decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        let streams = resp::xread(frame).unwrap();
        assert_eq!(streams.len(), 1);
        assert_eq!(&streams[0].0[..], CHANNEL.as_bytes());
        let entries = &streams[0].1;
        assert_eq!(entries.len(), 100);
        assert_eq!(entries[99].id, entry_id(99));
        assert_eq!(entries[99].fields, data_entry());
    }

    #[test]
    fn the_subscribe_op_parses() {
        let req = op::parse(&mut SUBSCRIBE_SINCE.to_vec()).unwrap();
        assert_eq!(req.req, Some(7));
        assert_eq!(
            req.op,
            Op::Subscribe {
                channel: CHANNEL.into(),
                start: Start::Since(StreamId::new(1_732_700_000_000, 0)),
                min_interval: None,
            }
        );
    }
}

/// How many heap allocations the hot path's frames cost: each one is an
/// allocator call on the core's thread, per message.
#[cfg(test)]
mod allocations {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use feedgate_core::frame::{self, FrameBuilder};

    use super::*;

    /// The system allocator, counting the calls (alloc and realloc) of the
    /// current thread, so tests running in parallel do not see each other's.
    struct Counting;

    thread_local! {
        static CALLS: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: every call is forwarded to `System` unchanged; the counter is a
    // const-initialised thread-local `Cell`, which never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = CALLS.try_with(|c| c.set(c.get() + 1));
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = CALLS.try_with(|c| c.set(c.get() + 1));
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Allocator calls made by `f` on this thread.
    fn calls<T>(f: impl FnOnce() -> T) -> usize {
        let before = CALLS.with(Cell::get);
        let out = f();
        let n = CALLS.with(Cell::get) - before;
        drop(out);
        n
    }

    /// simd-json's tape, one vector per check of a JSON value: outside the
    /// frame's own work (core/src/payload.rs), counted once in each figure.
    const JSON_CHECK: usize = 1;

    #[test]
    fn a_delivery_frame_costs_its_buffer_and_one_refcount() {
        let mut b = FrameBuilder::new();
        for fields in [data_entry(), data_entry_1kib()] {
            // Warm the builder's scratch space for this size, as a core's is
            // (simd-json grows its buffers again for a larger value after a
            // smaller one).
            b.stream_delivery(CHANNEL, entry_id(0), &fields);
            // The buffer (never grown: it is sized for the payload), the
            // shared refcount, and the JSON check.
            assert_eq!(
                calls(|| b.stream_delivery(CHANNEL, entry_id(1), &fields)),
                2 + JSON_CHECK
            );
            // Shared by ten subscribers: clones cost no allocation.
            let shared = calls(|| {
                let f = b.stream_delivery(CHANNEL, entry_id(1), &fields);
                [(); 10].map(|_| f.clone())
            });
            assert_eq!(shared, 2 + JSON_CHECK);
        }
        // Plain fields need no JSON check.
        let fields = multi_field_entry();
        assert_eq!(calls(|| b.stream_delivery(CHANNEL, entry_id(1), &fields)), 2);
        assert_eq!(calls(|| b.pubsub_delivery(CHANNEL, JSON_100B)), 2 + JSON_CHECK);
    }

    #[test]
    fn a_frame_for_one_connection_costs_one_allocation() {
        assert_eq!(calls(|| frame::ping(b"fg")), 1);
        assert_eq!(calls(|| frame::pong(b"fg")), 1);
        assert_eq!(calls(|| frame::text(br#"{"type":"pong"}"#)), 1);
        assert_eq!(calls(|| frame::close(1000, "bye")), 1);
        // A clone, should it be shared after all, allocates the refcount then.
        let f = frame::text(b"{}");
        assert_eq!(calls(|| f.clone()), 1);
    }

    #[test]
    fn the_json_check_allocates_once() {
        let mut p = feedgate_core::payload::PayloadWriter::new();
        p.is_json(JSON_100B);
        assert_eq!(calls(|| p.is_json(JSON_100B)), JSON_CHECK);
        let large = json_1kib();
        p.is_json(&large);
        assert_eq!(calls(|| p.is_json(&large)), JSON_CHECK);
    }
}
