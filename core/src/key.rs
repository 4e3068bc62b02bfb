//! A namespace's `key`: the payload field naming the instrument, read once per
//! message per core for conflation and snapshots (PROTOCOL.md sections 1 and 6).
//!
//! The value is compared as written: `"BTC"` and `"\u0042TC"` are two keys.

/// The key value of a stream entry: for an entry whose only field is `data`,
/// the top-level field `field` of that JSON object; for any other entry, the
/// value of its field named `field`.
pub fn of_entry<'a, F, V>(fields: &'a [(F, V)], field: &str) -> Option<&'a [u8]>
where
    F: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    match fields {
        [(name, value)] if name.as_ref() == b"data" => top_level_field(value.as_ref(), field),
        _ => fields
            .iter()
            .find(|(name, _)| name.as_ref() == field.as_bytes())
            .map(|(_, value)| value.as_ref()),
    }
}

/// The JSON text of the value of top-level field `field` in `json`, when
/// `json` is an object that has it. Linear and without recursion, so hostile
/// payloads cost no stack; bytes that are not JSON give `None` or a value
/// span that is compared as bytes, never a panic.
pub fn top_level_field<'a>(json: &'a [u8], field: &str) -> Option<&'a [u8]> {
    let mut at = skip_ws(json, 0);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at += 1;
    loop {
        at = skip_ws(json, at);
        if json.get(at) != Some(&b'"') {
            return None;
        }
        let name_end = string_end(json, at)?;
        let name = &json[at + 1..name_end - 1];
        at = skip_ws(json, name_end);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(json, at + 1);
        let value_end = value_end(json, at)?;
        if name == field.as_bytes() {
            return Some(&json[at..value_end]);
        }
        at = skip_ws(json, value_end);
        match json.get(at) {
            Some(b',') => at += 1,
            _ => return None,
        }
    }
}

fn skip_ws(json: &[u8], mut at: usize) -> usize {
    while matches!(json.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        at += 1;
    }
    at
}

/// The index just past the string that opens at `at` (a `"`).
fn string_end(json: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while i < json.len() {
        match json[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the value that starts at `at`: strings and nested
/// containers are skipped with a depth count, not a recursive descent.
fn value_end(json: &[u8], at: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = at;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i = string_end(json, i)?;
                if depth == 0 {
                    return Some(i);
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return (i > at).then_some(trim_end(json, at, i)),
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            b',' if depth == 0 => return (i > at).then_some(trim_end(json, at, i)),
            _ => {}
        }
        i += 1;
    }
    (depth == 0 && i > at).then_some(trim_end(json, at, i))
}

fn trim_end(json: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && matches!(json[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_top_level_field_of_any_kind() {
        let json = br#"{"px":101.5, "sym" : "BTC-USD" ,"book":{"sym":"x"},"n":[1,{"a":2}],"z":null}"#;
        assert_eq!(top_level_field(json, "sym"), Some(&br#""BTC-USD""#[..]));
        assert_eq!(top_level_field(json, "px"), Some(&b"101.5"[..]));
        assert_eq!(top_level_field(json, "book"), Some(&br#"{"sym":"x"}"#[..]));
        assert_eq!(top_level_field(json, "n"), Some(&br#"[1,{"a":2}]"#[..]));
        assert_eq!(top_level_field(json, "z"), Some(&b"null"[..]));
        assert_eq!(top_level_field(json, "missing"), None);
        assert_eq!(top_level_field(br#"{"a":"x\"}","sym":7}"#, "sym"), Some(&b"7"[..]));
    }

    #[test]
    fn non_objects_and_broken_json_have_no_key() {
        for json in [
            &b"[1]"[..],
            b"\"sym\"",
            b"",
            b"{",
            b"{\"sym\"",
            b"{\"sym\":",
            b"{1:2}",
            b"{\"a\":1 \"sym\":2}",
        ] {
            assert_eq!(
                top_level_field(json, "sym"),
                None,
                "{:?}",
                String::from_utf8_lossy(json)
            );
        }
    }

    #[test]
    fn an_entry_with_fields_keys_on_its_field_and_a_data_entry_on_its_json() {
        let fields = [(&b"sym"[..], &b"ETH"[..]), (b"px", b"3")];
        assert_eq!(of_entry(&fields, "sym"), Some(&b"ETH"[..]));
        assert_eq!(of_entry(&fields, "qty"), None);
        let data = [(&b"data"[..], &br#"{"sym":"ETH","px":3}"#[..])];
        assert_eq!(of_entry(&data, "sym"), Some(&br#""ETH""#[..]));
    }

    proptest! {
        /// Whatever the bytes, the scan ends and returns a span inside them.
        #[test]
        fn never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Some(value) = top_level_field(&bytes, "k") {
                let start = value.as_ptr() as usize - bytes.as_ptr() as usize;
                prop_assert!(start + value.len() <= bytes.len());
            }
        }

        /// On real JSON objects the scan agrees with a JSON parser.
        #[test]
        fn agrees_with_serde_json(map in proptest::collection::btree_map("[a-z]{1,3}", prop_oneof![
            any::<i32>().prop_map(serde_json::Value::from),
            "[a-z\"\\\\{}]{0,6}".prop_map(serde_json::Value::from),
            proptest::collection::vec(any::<bool>(), 0..3).prop_map(serde_json::Value::from),
        ], 0..6)) {
            let object: serde_json::Map<String, serde_json::Value> = map.into_iter().collect();
            let json = serde_json::to_vec(&serde_json::Value::Object(object.clone())).unwrap();
            for (name, value) in &object {
                let found = top_level_field(&json, name).expect("present");
                let parsed: serde_json::Value = serde_json::from_slice(found).unwrap();
                prop_assert_eq!(&parsed, value);
            }
            prop_assert_eq!(top_level_field(&json, "ABSENT"), None);
        }
    }
}
