//! The payload rules of PROTOCOL.md section 2: how a stream entry or a pub/sub
//! body becomes the `data` of a delivery.

use crate::json_guard;

/// Writes payloads as JSON, checking each value once per message.
///
/// Holds simd-json's scratch buffers so that the per-message check allocates
/// nothing after warm-up (one writer per core).
#[derive(Default)]
pub struct PayloadWriter {
    /// simd-json parses in place, so the value is copied here first; reusing the
    /// vector keeps that copy allocation-free.
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
}

impl std::fmt::Debug for PayloadWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadWriter").finish_non_exhaustive()
    }
}

impl PayloadWriter {
    /// A writer with empty scratch space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `value` is one complete JSON value (UTF-8 checked too).
    pub fn is_json(&mut self, value: &[u8]) -> bool {
        // simd-json 0.14.3 accepts some values that are not JSON, which would
        // then be spliced into frames as they are (found by fuzz/ `payload`,
        // results/fuzz-2026-12-01.md): `0\0garbage` (it stops at a NUL after a
        // root scalar) and a 19-digit number followed by any byte. The token
        // scan is one pass over bytes simd-json reads anyway; it refuses those
        // outside strings, and simd-json refuses raw NULs inside them.
        if !json_guard::tokens_are_json(value) {
            return false;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(value);
        simd_json::to_tape_with_buffers(&mut self.scratch, &mut self.buffers).is_ok()
    }

    //= PROTOCOL.md section 2
    //# A payload value that is valid JSON is spliced into the frame as it is. One that is
    //# not valid JSON (or not UTF-8) is sent as a JSON string (escaped).
    /// Appends `value` to `out`: as it is when it is JSON, else as a JSON string.
    pub fn write_value(&mut self, out: &mut Vec<u8>, value: &[u8]) {
        if self.is_json(value) {
            out.extend_from_slice(value);
        } else {
            write_json_string(out, value);
        }
    }

    //= PROTOCOL.md section 2
    //# A stream entry whose only field is `data`: its value is the payload.
    //# A stream entry with any other fields: the payload is a JSON object of those fields,
    //# values as JSON strings, in entry order.
    /// Appends the payload of a stream entry with `fields` (name, value pairs in
    /// entry order).
    pub fn write_entry<F, V>(&mut self, out: &mut Vec<u8>, fields: &[(F, V)])
    where
        F: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        if let [(name, value)] = fields {
            if name.as_ref() == b"data" {
                self.write_value(out, value.as_ref());
                return;
            }
        }
        out.push(b'{');
        for (i, (name, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(out, name.as_ref());
            out.push(b':');
            write_json_string(out, value.as_ref());
        }
        out.push(b'}');
    }
}

/// Appends `bytes` as a JSON string. Bytes that are not UTF-8 become U+FFFD, as a
/// WebSocket text frame must hold UTF-8.
pub fn write_json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    match std::str::from_utf8(bytes) {
        Ok(text) => escape_into(out, text),
        Err(_) => escape_into(out, &String::from_utf8_lossy(bytes)),
    }
    out.push(b'"');
}

fn escape_into(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_payloads_are_checked_without_recursion() {
        // simd-json builds its tape with an explicit stack, not recursion: a
        // payload nested far past any thread's stack is still checked.
        let mut writer = PayloadWriter::new();
        let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
        assert!(writer.is_json(deep.as_bytes()));
        assert!(!writer.is_json("[".repeat(1_000_000).as_bytes()));
    }
    use proptest::prelude::*;

    fn value(raw: &[u8]) -> String {
        let mut out = Vec::new();
        PayloadWriter::new().write_value(&mut out, raw);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn valid_json_is_spliced_as_is() {
        assert_eq!(value(br#"{"px":101.5,"qty":3}"#), r#"{"px":101.5,"qty":3}"#);
        assert_eq!(value(b"42"), "42");
        assert_eq!(value(b"[1, 2]"), "[1, 2]");
        assert_eq!(value(br#""quoted""#), r#""quoted""#);
        assert_eq!(value(b"true"), "true");
    }

    #[test]
    fn invalid_json_becomes_a_string() {
        assert_eq!(value(b"hello"), r#""hello""#);
        assert_eq!(value(b"{\"a\":"), r#""{\"a\":""#);
        assert_eq!(value(b""), r#""""#);
        assert_eq!(value(b"tab\there\nnl\x01"), r#""tab\there\nnl\u0001""#);
    }

    #[test]
    fn a_scalar_followed_by_nul_is_not_json() {
        assert_eq!(value(b"0\0\0\x001"), r#""0\u0000\u0000\u00001""#);
        assert_eq!(value(b"true\0x"), r#""true\u0000x""#);
    }

    #[test]
    fn non_utf8_becomes_a_replacement_string() {
        assert_eq!(value(b"a\xffb"), "\"a\u{fffd}b\"");
    }

    #[test]
    fn fields_become_an_object_of_strings_in_order() {
        let mut out = Vec::new();
        let fields = [("px", "101.5"), ("qty", "3")];
        PayloadWriter::new().write_entry(&mut out, &fields);
        assert_eq!(out, br#"{"px":"101.5","qty":"3"}"#);
    }

    #[test]
    fn data_with_other_fields_is_not_spliced() {
        let mut out = Vec::new();
        let fields = [("data", "{}"), ("x", "1")];
        PayloadWriter::new().write_entry(&mut out, &fields);
        assert_eq!(out, br#"{"data":"{}","x":"1"}"#);
    }

    #[test]
    fn nul_bytes_anywhere_are_not_json() {
        let mut writer = PayloadWriter::new();
        for value in [&b""[..], b"0\x001", b"\"a\x00b\"", b"[\"\x00\"]", b"true\x00"] {
            assert!(!writer.is_json(value), "{value:?}");
        }
    }

    #[test]
    fn control_characters_use_their_short_escapes() {
        let mut out = Vec::new();
        write_json_string(&mut out, b"\r\x08\x0c\t\n\x01\"\\");
        assert_eq!(out, br#""\r\b\f\t\n\u0001\"\\""#);
        assert_eq!(format!("{:?}", PayloadWriter::new()), "PayloadWriter { .. }");
    }

    #[test]
    fn a_lone_data_field_is_the_payload() {
        let mut out = Vec::new();
        PayloadWriter::new().write_entry(&mut out, &[("data", "[1]")]);
        assert_eq!(out, b"[1]");
    }

    /// Arbitrary JSON values, a few levels deep.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// PROTOCOL.md section 2: valid JSON is spliced as it is, byte for byte,
        /// whatever its layout (pretty or compact).
        #[test]
        fn valid_json_is_spliced_byte_for_byte(value in json_value(), pretty in any::<bool>()) {
            let raw = if pretty {
                serde_json::to_vec_pretty(&value).unwrap()
            } else {
                serde_json::to_vec(&value).unwrap()
            };
            let mut out = Vec::new();
            PayloadWriter::new().write_value(&mut out, &raw);
            prop_assert_eq!(out, raw);
        }

        #[test]
        fn any_bytes_give_valid_json(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            PayloadWriter::new().write_value(&mut out, &raw);
            let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
            if serde_json::from_slice::<serde_json::Value>(&raw).is_err() {
                // Not JSON: it must come back as the same text (lossy for non-UTF-8).
                prop_assert_eq!(parsed.as_str().unwrap(), String::from_utf8_lossy(&raw));
            }
        }

        #[test]
        fn strings_round_trip(text in ".*") {
            let mut out = Vec::new();
            write_json_string(&mut out, text.as_bytes());
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, text);
        }
    }
}
