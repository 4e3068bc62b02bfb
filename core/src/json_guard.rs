//! A linear, non-recursive pre-scan of client JSON, run before simd-json builds
//! a DOM: building a DOM recurses once per nesting level, so an op nesting `[`
//! 30,000 deep overflowed a core's stack and aborted the process.
//!
//! The scan checks only what the parser would let through and must not:
//! nesting past [`MAX_DEPTH`], `\u` escapes of lone UTF-16 surrogates
//! (simd-json turns `"\ud800"` into U+0000), and tokens that are not JSON:
//! simd-json 0.14.3 accepts a number of 19 or more digits followed by any byte
//! (`9999999999999999999%`, found by fuzzing, results/fuzz-2026-12-01.md) and
//! NUL bytes after a scalar. Structure (brackets, commas, colons) is left to
//! simd-json.

/// Deepest nesting of arrays and objects accepted in a client op. An op needs
/// two levels; 32 leaves room for any reasonable extra field.
pub const MAX_DEPTH: usize = 32;

/// Why a client message was refused before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// Arrays and objects nest deeper than [`MAX_DEPTH`].
    #[error("JSON nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A `\u` escape names half of a surrogate pair without the other half.
    #[error("JSON string holds a lone UTF-16 surrogate escape")]
    LoneSurrogate,
    /// Outside strings, bytes that are no JSON token (a malformed number, a
    /// stray byte).
    #[error("message is not valid JSON")]
    BadToken,
}

/// Scans a client op once, without recursion: depth, escapes and tokens.
pub fn check(text: &[u8]) -> Result<(), GuardError> {
    scan(text, Some(MAX_DEPTH))
}

/// Whether every token of `text` outside strings is a JSON token, with no
/// depth bound (payloads are checked by simd-json's tape, which does not
/// recurse). Hot path: one pass over bytes simd-json is about to read anyway.
pub fn tokens_are_json(text: &[u8]) -> bool {
    scan(text, None).is_ok()
}

fn scan(text: &[u8], max_depth: Option<usize>) -> Result<(), GuardError> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'[' | b'{' => {
                depth += 1;
                if max_depth.is_some_and(|max| depth > max) {
                    return Err(GuardError::TooDeep);
                }
            }
            // Unbalanced closers are a syntax error simd-json reports.
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => i = skip_string(text, i + 1)?,
            b',' | b':' | b' ' | b'\t' | b'\n' | b'\r' => {}
            b'-' | b'0'..=b'9' => {
                let end = token_end(text, i, |b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'));
                if !is_json_number(&text[i..end]) {
                    return Err(GuardError::BadToken);
                }
                i = end;
                continue;
            }
            b'a'..=b'z' => {
                let end = token_end(text, i, |b| b.is_ascii_lowercase());
                if !matches!(&text[i..end], b"true" | b"false" | b"null") {
                    return Err(GuardError::BadToken);
                }
                i = end;
                continue;
            }
            _ => return Err(GuardError::BadToken),
        }
        i += 1;
    }
    Ok(())
}

fn token_end(text: &[u8], start: usize, part: impl Fn(u8) -> bool) -> usize {
    text[start..]
        .iter()
        .position(|&b| !part(b))
        .map_or(text.len(), |n| start + n)
}

//= https://www.rfc-editor.org/rfc/rfc8259#section-6
//# number = [ minus ] int [ frac ] [ exp ]
//# int = zero / ( digit1-9 *DIGIT )
//# frac = decimal-point 1*DIGIT
//# exp = e [ minus / plus ] 1*DIGIT
fn is_json_number(token: &[u8]) -> bool {
    let digits = |s: &[u8]| s.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut rest = token.strip_prefix(b"-").unwrap_or(token);
    match digits(rest) {
        0 => return false,
        n if n > 1 && rest[0] == b'0' => return false,
        n => rest = &rest[n..],
    }
    if let Some(frac) = rest.strip_prefix(b".") {
        match digits(frac) {
            0 => return false,
            n => rest = &frac[n..],
        }
    }
    if let Some(exp) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exp = exp.strip_prefix(b"+").or_else(|| exp.strip_prefix(b"-")).unwrap_or(exp);
        match digits(exp) {
            0 => return false,
            n => rest = &exp[n..],
        }
    }
    rest.is_empty()
}

/// Skips a string body starting at `i` (just after its opening quote); returns
/// the index of the closing quote (or the end of `text`).
fn skip_string(text: &[u8], mut i: usize) -> Result<usize, GuardError> {
    while i < text.len() {
        match text[i] {
            b'"' => return Ok(i),
            b'\\' if text.get(i + 1) == Some(&b'u') => {
                i = skip_unicode_escape(text, i)?;
                continue;
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(i)
}

//= https://www.rfc-editor.org/rfc/rfc8259#section-7
//# To escape an extended character that is not in the Basic Multilingual
//# Plane, the character is represented as a 12-character sequence, encoding
//# the UTF-16 surrogate pair.
/// Checks the `\uXXXX` escape at `i` (and its pair, for a high surrogate);
/// returns the index after it. A malformed escape is left for the parser.
fn skip_unicode_escape(text: &[u8], i: usize) -> Result<usize, GuardError> {
    let Some(unit) = hex4(text, i + 2) else {
        return Ok(i + 2);
    };
    match unit {
        0xD800..=0xDBFF => {
            let low = (text.get(i + 6) == Some(&b'\\') && text.get(i + 7) == Some(&b'u'))
                .then(|| hex4(text, i + 8))
                .flatten();
            match low {
                Some(0xDC00..=0xDFFF) => Ok(i + 12),
                _ => Err(GuardError::LoneSurrogate),
            }
        }
        0xDC00..=0xDFFF => Err(GuardError::LoneSurrogate),
        _ => Ok(i + 6),
    }
}

fn hex4(text: &[u8], at: usize) -> Option<u16> {
    let digits = text.get(at..at + 4)?;
    let s = std::str::from_utf8(digits).ok()?;
    u16::from_str_radix(s, 16)
        .ok()
        .filter(|_| digits.iter().all(u8::is_ascii_hexdigit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nested(open: &str, close: &str, depth: usize) -> String {
        format!("{}{}", open.repeat(depth), close.repeat(depth))
    }

    #[test]
    fn refuses_deep_nesting_of_arrays_and_objects() {
        assert_eq!(check(nested("[", "]", MAX_DEPTH).as_bytes()), Ok(()));
        assert_eq!(
            check(nested("[", "]", MAX_DEPTH + 1).as_bytes()),
            Err(GuardError::TooDeep)
        );
        assert_eq!(check(nested("[", "]", 30_000).as_bytes()), Err(GuardError::TooDeep));
        let objects = format!("{}1{}", "{\"a\":".repeat(MAX_DEPTH + 1), "}".repeat(MAX_DEPTH + 1));
        assert_eq!(check(objects.as_bytes()), Err(GuardError::TooDeep));
        // Unclosed openers count too: the parser never sees them.
        assert_eq!(check("[".repeat(100_000).as_bytes()), Err(GuardError::TooDeep));
    }

    #[test]
    fn tokens_outside_strings_must_be_json() {
        for good in [
            &br#"{"a":[1,-0,0.5,1e9,-2.5E-3,1E+2,true,false,null]}"#[..],
            b" \t\r\n[ 12 , 34 ]",
            b"9999999999999999999",
            br#""%\u0000 anything in a string""#,
        ] {
            assert!(tokens_are_json(good), "{}", String::from_utf8_lossy(good));
        }
        // simd-json 0.14.3 accepted each of these (fuzzing, results/fuzz-2026-12-01.md).
        for bad in [
            &b"9999999999999999999%"[..],
            b"[1.234567890123456789x]",
            b"-464444454444444444\x02",
            b"0\x00\x00\x001",
            b"true\0x",
            b"01",
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"-",
            b"--1",
            b"1-2",
            b"tru",
            b"nulll",
            b"True",
            b"'a'",
            b"{a:1}",
        ] {
            assert!(!tokens_are_json(bad), "{}", String::from_utf8_lossy(bad));
            assert_eq!(
                check(bad),
                Err(GuardError::BadToken),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_unicode_escapes_are_left_to_the_parser_and_scanning_goes_on() {
        for text in [r#""\u12" "#, r#""\uZZZZ""#, r#""\u""#] {
            assert_eq!(check(text.as_bytes()), Ok(()), "{text}");
        }
        let text = format!(r#"{}["\u12",{}{}]"#, " ".repeat(100), "[".repeat(40), "]".repeat(40));
        assert_eq!(check(text.as_bytes()), Err(GuardError::TooDeep));
        // A high surrogate's pair must be a whole `\u` escape.
        assert_eq!(check(br#""\ud83dxudc00""#), Err(GuardError::LoneSurrogate));
        assert_eq!(check(br#""\ud83d\xdc00""#), Err(GuardError::LoneSurrogate));
    }

    #[test]
    fn sibling_containers_do_not_add_depth() {
        let siblings = format!("[{}[]]", "[],".repeat(100));
        assert_eq!(check(siblings.as_bytes()), Ok(()));
    }

    #[test]
    fn escapes_other_than_u_are_skipped_whole() {
        // An escaped backslash before `d800` is text, not an escape.
        assert_eq!(check(br#"{"a":"\\d800"}"#), Ok(()));
        // An escape deep into the text must not skip what follows it.
        let text = format!(r#"{}["\n",{}{}]"#, " ".repeat(100), "[".repeat(40), "]".repeat(40));
        assert_eq!(check(text.as_bytes()), Err(GuardError::TooDeep));
        let text = format!(r#"{}["\u0041",{}{}]"#, " ".repeat(100), "[".repeat(40), "]".repeat(40));
        assert_eq!(check(text.as_bytes()), Err(GuardError::TooDeep));
        let text = format!(
            r#"{}["\ud83d\ude00",{}{}]"#,
            " ".repeat(100),
            "[".repeat(40),
            "]".repeat(40)
        );
        assert_eq!(check(text.as_bytes()), Err(GuardError::TooDeep));
        let text = format!(r#"{}"\ud800""#, " ".repeat(100));
        assert_eq!(check(text.as_bytes()), Err(GuardError::LoneSurrogate));
        let text = format!(r#"{}"\ud800\ud800""#, " ".repeat(100));
        assert_eq!(check(text.as_bytes()), Err(GuardError::LoneSurrogate));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!(r#"{{"op":"ping","x":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert_eq!(check(text.as_bytes()), Ok(()));
    }

    #[test]
    fn refuses_lone_surrogates_and_accepts_pairs() {
        assert_eq!(check(br#"{"a":"\ud800"}"#), Err(GuardError::LoneSurrogate));
        assert_eq!(check(br#"{"a":"\uDBFFx"}"#), Err(GuardError::LoneSurrogate));
        assert_eq!(check(br#"{"a":"\udc00"}"#), Err(GuardError::LoneSurrogate));
        assert_eq!(check(br#"{"a":"\ud800\u0041"}"#), Err(GuardError::LoneSurrogate));
        assert_eq!(check(br#"{"a":"\ud83d\ude00"}"#), Ok(()));
        assert_eq!(check(br#"{"a":"\u0000\\u"}"#), Ok(()));
        // An escaped backslash before `u` is not an escape.
        assert_eq!(check(br#"{"a":"\\ud800"}"#), Ok(()));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check(&bytes);
        }

        #[test]
        fn depth_matches_a_model(depth in 0usize..80, in_string in any::<bool>()) {
            let body = nested("[", "]", depth);
            let text = if in_string { format!("\"{body}\"") } else { body };
            let expected = if in_string || depth <= MAX_DEPTH { Ok(()) } else { Err(GuardError::TooDeep) };
            prop_assert_eq!(check(text.as_bytes()), expected);
        }
    }
}
