//! PROTOCOL.md section 2, byte for byte: how a stream entry or a pub/sub body
//! becomes the `data` of a delivery, and the delivery's exact layout.

mod support;

use std::collections::HashMap;

use support::*;

/// What a producer writes for one case.
enum Write {
    /// `XADD <ch> * f1 v1 ...`
    Entry(Vec<Vec<u8>>),
    /// `PUBLISH <ch> <body>`
    Publish(Vec<u8>),
}

struct Case {
    label: &'static str,
    write: Write,
    /// The exact bytes expected after `"data":`.
    data: String,
}

/// A stream entry whose only field is `data`.
fn data_entry(label: &'static str, value: &[u8], data: &str) -> Case {
    Case {
        label,
        write: Write::Entry(vec![b"data".to_vec(), value.to_vec()]),
        data: data.to_owned(),
    }
}

/// A stream entry with the given fields (name, value, name, value...).
fn fields_entry(label: &'static str, fields: &[&[u8]], data: &str) -> Case {
    Case {
        label,
        write: Write::Entry(fields.iter().map(|f| f.to_vec()).collect()),
        data: data.to_owned(),
    }
}

fn pubsub(label: &'static str, body: &[u8], data: &str) -> Case {
    Case {
        label,
        write: Write::Publish(body.to_vec()),
        data: data.to_owned(),
    }
}

/// A value that is not JSON, as the JSON string it must become: escaped the
/// usual way (`\"`, `\\`, `\n`, `\t`, `\u0001`...), invalid UTF-8 as U+FFFD.
fn as_json_string(raw: &[u8]) -> String {
    serde_json::to_string(&String::from_utf8_lossy(raw)).unwrap()
}

/// The same value spliced as it is.
fn spliced(raw: &[u8]) -> String {
    String::from_utf8(raw.to_vec()).unwrap()
}

/// Subscribes one client to one channel per case, writes every case, and
/// compares each delivery with the exact bytes the protocol asks for.
/// Reports every mismatch at once.
fn run_cases(cases: Vec<Case>) {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut c = fg.connect();
    let channel = |i: usize, case: &Case| match case.write {
        Write::Entry(_) => format!("pl.{i}"),
        Write::Publish(_) => format!("ps.pl.{i}"),
    };
    for (i, case) in cases.iter().enumerate() {
        c.sub(&channel(i, case));
    }
    let mut expected: HashMap<String, (&str, String)> = HashMap::new();
    for (i, case) in cases.iter().enumerate() {
        let ch = channel(i, case);
        let frame = match &case.write {
            Write::Entry(fields) => {
                let flat: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
                let id = xadd(&mut con, &ch, &flat);
                stream_frame(&ch, &id, &case.data)
            }
            Write::Publish(body) => {
                publish(&mut con, &ch, body);
                pubsub_frame(&ch, &case.data)
            }
        };
        expected.insert(ch, (case.label, frame));
    }
    let mut failures = Vec::new();
    for _ in 0..cases.len() {
        let raw = c.recv_text();
        let ch = parse_delivery(&raw).ch;
        let Some((label, want)) = expected.remove(&ch) else {
            failures.push(format!("unexpected or repeated delivery: {raw}"));
            continue;
        };
        if raw != want {
            failures.push(format!("{label}:\n  want {want:?}\n  got  {raw:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} payload cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn lone_data_field_is_spliced_when_json_and_a_string_otherwise() {
    let mut cases = Vec::new();
    let json_values: [(&'static str, &[u8]); 14] = [
        ("object", br#"{"px":101.5,"qty":3}"#),
        ("object with inner spaces", br#"{ "px" : 101.5 , "qty" : [1, 2] }"#),
        ("integer", b"42"),
        ("negative exponent number", b"-1.5e3"),
        ("zero", b"0"),
        ("true", b"true"),
        ("false", b"false"),
        ("null", b"null"),
        ("string", br#""quoted""#),
        ("string with escapes", br#""a\"b\\c\n\u00e9""#),
        ("array", br#"[1, "two", {"3": null}, []]"#),
        ("unicode as is", "{\"k\":\"é😀 ü\"}".as_bytes()),
        ("surrounding whitespace", b"  {\"a\":1}\n"),
        ("pretty printed", b"{\n  \"a\": [\n    1\n  ]\n}"),
    ];
    for (label, raw) in json_values {
        cases.push(data_entry(label, raw, &spliced(raw)));
    }
    let not_json: [(&'static str, &[u8]); 14] = [
        ("bare word", b"hello"),
        ("empty value", b""),
        ("only spaces", b"   "),
        ("truncated object", br#"{"a":"#),
        ("trailing comma", br#"{"a":1,}"#),
        ("two values", br#"{"a":1}{"b":2}"#),
        ("leading zero", b"01"),
        ("NaN", b"NaN"),
        ("single quotes", b"'single'"),
        ("unquoted key", b"{a:1}"),
        (
            "controls quotes backslash",
            b"tab\there \"q\" back\\slash\nnl\r\x01\x1f\x08\x0c end",
        ),
        ("slash and DEL", b"a/b\x7f"),
        ("invalid UTF-8", b"a\xffb"),
        ("JSON string holding invalid UTF-8", b"\"a\xc3\x28b\""),
    ];
    for (label, raw) in not_json {
        cases.push(data_entry(label, raw, &as_json_string(raw)));
    }
    cases.push(data_entry(
        "unicode text, not JSON",
        "héllo wörld 😀".as_bytes(),
        "\"héllo wörld 😀\"",
    ));
    run_cases(cases);
}

#[test]
fn other_fields_become_an_object_of_strings_in_entry_order() {
    let cases = vec![
        fields_entry(
            "the documented example",
            &[b"px", b"101.5", b"qty", b"3"],
            r#"{"px":"101.5","qty":"3"}"#,
        ),
        fields_entry(
            "entry order, not sorted",
            &[b"z", b"1", b"a", b"2", b"m", b"3"],
            r#"{"z":"1","a":"2","m":"3"}"#,
        ),
        fields_entry("one field that is not data", &[b"n", b"42"], r#"{"n":"42"}"#),
        fields_entry(
            "JSON values stay strings",
            &[b"o", br#"{"x":1}"#, b"t", b"true"],
            r#"{"o":"{\"x\":1}","t":"true"}"#,
        ),
        fields_entry(
            "data among others",
            &[b"data", b"{}", b"x", b"1"],
            r#"{"data":"{}","x":"1"}"#,
        ),
        fields_entry(
            "data after others",
            &[b"x", b"1", b"data", b"[1]"],
            r#"{"x":"1","data":"[1]"}"#,
        ),
        fields_entry("field names are case-sensitive", &[b"DATA", b"5"], r#"{"DATA":"5"}"#),
        fields_entry(
            "escaped names and values",
            &[b"a\"b", b"c\nd\\e"],
            r#"{"a\"b":"c\nd\\e"}"#,
        ),
        fields_entry(
            "control characters",
            &[b"k", b"\x01\t\x1f"],
            r#"{"k":"\u0001\t\u001f"}"#,
        ),
        fields_entry("empty value", &[b"k", b""], r#"{"k":""}"#),
        fields_entry("unicode", &[b"caf\xc3\xa9", b"\xf0\x9f\x98\x80"], "{\"café\":\"😀\"}"),
        fields_entry("invalid UTF-8 value", &[b"k", b"a\xffb"], "{\"k\":\"a\u{fffd}b\"}"),
        fields_entry("invalid UTF-8 name", &[b"\xfe", b"v"], "{\"\u{fffd}\":\"v\"}"),
    ];
    run_cases(cases);
}

#[test]
fn pubsub_body_is_spliced_when_json_and_a_string_otherwise() {
    let mut cases = Vec::new();
    for (label, raw) in [
        ("object", br#"{"x":1,"y":[true,null]}"#.as_slice()),
        ("array", b"[1, 2]"),
        ("number", b"3.25"),
        ("string", br#""str""#),
        ("whitespace kept", b" {\"a\" : 1} "),
    ] {
        cases.push(pubsub(label, raw, &spliced(raw)));
    }
    for (label, raw) in [
        ("bare word", b"hello".as_slice()),
        ("empty body", b""),
        ("truncated", b"[1,"),
        ("controls", b"line1\nline2\t\"q\"\\"),
        ("invalid UTF-8", b"\xff\xfeok"),
    ] {
        cases.push(pubsub(label, raw, &as_json_string(raw)));
    }
    run_cases(cases);
}

#[test]
fn large_payloads_arrive_whole() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut c = fg.connect();
    c.sub("md.big");
    c.sub("ps.big");

    // Over 64 KiB: the server's frames need the 64-bit length form.
    let big_json = format!(r#"{{"blob":"{}","n":[1,2,3]}}"#, "x".repeat(300_000));
    assert_eq!(
        produce(&mut con, "md.big", &big_json),
        c.recv_text(),
        "300 kB JSON entry"
    );
    assert_eq!(
        produce(&mut con, "ps.big", &big_json),
        c.recv_text(),
        "300 kB JSON pub/sub body"
    );

    let big_text = "not json ".repeat(20_000);
    let id = xadd_data(&mut con, "md.big", big_text.as_bytes());
    assert_eq!(
        c.recv_text(),
        stream_frame("md.big", &id, &as_json_string(big_text.as_bytes())),
        "180 kB text entry"
    );
}
