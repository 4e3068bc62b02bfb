//! HTTP/1.1 on the WebSocket port: the request head, the routes, and the
//! RFC 6455 upgrade handshake (done here: fastwebsockets' upgrade helper needs
//! a `Send` stream, which monoio's are not; shared/TRAPS.md).
//!
//! Sans-I/O: the server feeds bytes in and writes the answers out, so the
//! parser is fuzzed (`fuzz/`) without a socket. httparse is iterative and
//! bounded by [`MAX_HEAD`] and 48 headers.

use base64::Engine;
use sha1::{Digest, Sha1};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// A valid WebSocket upgrade on `/ws`; carries the `Sec-WebSocket-Accept` value.
    Upgrade {
        accept: String,
    },
    Healthz,
    Readyz,
    /// An answer decided by the request alone (404, 405, 400 ...).
    Respond {
        status: u16,
        body: &'static str,
    },
}

/// A parsed request head.
pub enum Head {
    /// The head is complete: `len` bytes long.
    Complete { route: Route, len: usize },
    /// More bytes are needed.
    Partial,
}

/// Parses a request head from `buf` and decides its route. Malformed input gives
/// a 400 route, never a panic.
pub fn parse(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) => {
            return bad(buf.len(), 431, "request head too large\n");
        }
        Err(httparse::Error::TooManyHeaders) => return bad(buf.len(), 431, "too many headers\n"),
        Err(_) => return bad(buf.len(), 400, "malformed request\n"),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return bad(len, 400, "malformed request\n");
    };
    let path = target.split('?').next().unwrap_or(target);
    let route = match (method, path) {
        //= rfc6455#section-4.2.1
        //# 1. An HTTP/1.1 or higher GET request, including a "Request-URI"
        ("GET", "/ws") if req.version != Some(1) => Route::Respond {
            status: 400,
            body: "a WebSocket upgrade needs HTTP/1.1\n",
        },
        ("GET", "/ws") => upgrade(req.headers),
        ("GET", "/healthz") => Route::Healthz,
        ("GET", "/readyz") => Route::Readyz,
        (_, "/ws" | "/healthz" | "/readyz") => Route::Respond {
            status: 405,
            body: "method not allowed\n",
        },
        _ => Route::Respond {
            status: 404,
            body: "not found\n",
        },
    };
    Head::Complete { route, len }
}

fn bad(len: usize, status: u16, body: &'static str) -> Head {
    Head::Complete {
        route: Route::Respond { status, body },
        len,
    }
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

//= rfc6455#section-4.2.1
//# 3. An |Upgrade| header field containing the value "websocket"
//# 4. A |Connection| header field that includes the token "Upgrade"
//# 5. A |Sec-WebSocket-Key| header field with a base64-encoded value that, when
//#    decoded, is 16 bytes in length.
//# 6. A |Sec-WebSocket-Version| header field, with a value of 13.
fn upgrade(headers: &[httparse::Header<'_>]) -> Route {
    let upgrade_ok = header(headers, "upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection_ok = header(headers, "connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade_ok || !connection_ok {
        return Route::Respond {
            status: 400,
            body: "expected a WebSocket upgrade\n",
        };
    }
    //= rfc6455#section-4.2.2
    //# If this version does not match a version understood by the server, the
    //# server MUST abort the WebSocket handshake described in this section and
    //# instead send an appropriate HTTP error code (such as 426 Upgrade Required)
    //# and a |Sec-WebSocket-Version| header field indicating the version(s) the
    //# server is capable of understanding.
    let version = header(headers, "sec-websocket-version").map(<[u8]>::trim_ascii);
    if version.is_none() {
        return Route::Respond {
            status: 400,
            body: "missing Sec-WebSocket-Version\n",
        };
    }
    if version != Some(b"13") {
        return Route::Respond {
            status: 426,
            body: "Sec-WebSocket-Version must be 13\n",
        };
    }
    let key = header(headers, "sec-websocket-key").map(<[u8]>::trim_ascii);
    let key_ok = key.is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|raw| raw.len() == 16)
    });
    match key {
        Some(key) if key_ok => Route::Upgrade {
            accept: accept_key(key),
        },
        _ => Route::Respond {
            status: 400,
            body: "missing or bad Sec-WebSocket-Key\n",
        },
    }
}

//= rfc6455#section-4.2.2
//# concatenate this with the Globally Unique Identifier
//# "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" ... take the SHA-1 hash of this
//# concatenated value ... base64-encoded
/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The 101 response that completes the upgrade.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A complete plain response; the connection closes after it.
pub fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = match status {
        426 => "Sec-WebSocket-Version: 13\r\n",
        405 => "Allow: GET\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(raw: &str) -> Route {
        match parse(raw.as_bytes()) {
            Head::Complete { route, .. } => route,
            Head::Partial => panic!("partial"),
        }
    }

    #[test]
    fn rfc_example_accept_key() {
        // rfc6455 section 1.3's worked example.
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn routes() {
        let ws = "GET /ws?token=x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(
            route(ws),
            Route::Upgrade {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
        assert_eq!(route("GET /healthz HTTP/1.1\r\n\r\n"), Route::Healthz);
        assert_eq!(route("GET /readyz HTTP/1.1\r\n\r\n"), Route::Readyz);
        assert!(matches!(
            route("GET /nope HTTP/1.1\r\n\r\n"),
            Route::Respond { status: 404, .. }
        ));
        assert!(matches!(
            route("POST /ws HTTP/1.1\r\n\r\n"),
            Route::Respond { status: 405, .. }
        ));
        assert!(matches!(
            route("GET /ws HTTP/1.1\r\n\r\n"),
            Route::Respond { status: 400, .. }
        ));
        assert!(matches!(
            route("\x00\x01garbage\r\n\r\n"),
            Route::Respond { status: 400, .. }
        ));
        let old = ws.replace("Version: 13", "Version: 8");
        assert!(matches!(route(&old), Route::Respond { status: 426, .. }));
        let missing = ws.replace("Sec-WebSocket-Version: 13\r\n", "");
        assert!(matches!(route(&missing), Route::Respond { status: 400, .. }));
        let http10 = ws.replace("HTTP/1.1", "HTTP/1.0");
        assert!(matches!(route(&http10), Route::Respond { status: 400, .. }));
        let short_key = ws.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25j");
        assert!(matches!(route(&short_key), Route::Respond { status: 400, .. }));
    }

    #[test]
    fn upgrades_need_both_upgrade_and_connection_tokens() {
        let ws = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(matches!(route(ws), Route::Upgrade { .. }));
        for broken in [
            ws.replace("Upgrade: websocket\r\n", ""),
            ws.replace("Upgrade: websocket", "Upgrade: h2c"),
            ws.replace("Connection: Upgrade", "Connection: keep-alive"),
            ws.replace("Connection: Upgrade\r\n", ""),
        ] {
            assert!(
                matches!(route(&broken), Route::Respond { status: 400, .. }),
                "{broken:?}"
            );
        }
        // Tokens are matched case-insensitively within comma lists.
        let listed = ws.replace("Connection: Upgrade", "Connection: keep-alive,  UPGRADE ");
        assert!(matches!(route(&listed), Route::Upgrade { .. }));
    }

    #[test]
    fn responses_are_complete_http_messages() {
        assert_eq!(
            switching_protocols("abc="),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\n\r\n"
        );
        assert_eq!(
            response(200, "ok\n"),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
        );
        for (status, reason) in [
            (400, "Bad Request"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (426, "Upgrade Required"),
            (431, "Request Header Fields Too Large"),
            (503, "Service Unavailable"),
            (418, "Error"),
        ] {
            let text = String::from_utf8(response(status, "x")).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} {reason}\r\n")), "{text}");
        }
        let upgrade_required = String::from_utf8(response(426, "")).unwrap();
        assert!(upgrade_required.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let not_allowed = String::from_utf8(response(405, "")).unwrap();
        assert!(not_allowed.contains("\r\nAllow: GET\r\n"));
        assert!(!String::from_utf8(response(404, "")).unwrap().contains("Allow"));
    }

    #[test]
    fn a_partial_head_waits_until_exactly_the_size_limit() {
        assert_eq!(MAX_HEAD, 16_384);
        let just_under = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD - 1 - 19));
        assert_eq!(just_under.len(), MAX_HEAD - 1);
        assert!(matches!(parse(just_under.as_bytes()), Head::Partial));
        let at_limit = format!("{just_under}a");
        assert!(matches!(
            parse(at_limit.as_bytes()),
            Head::Complete {
                route: Route::Respond { status: 431, .. },
                ..
            }
        ));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(49));
        assert!(matches!(
            parse(many.as_bytes()),
            Head::Complete {
                route: Route::Respond { status: 431, .. },
                ..
            }
        ));
    }

    #[test]
    fn partial_heads_wait_and_huge_ones_are_refused() {
        assert!(matches!(parse(b"GET /ws HTTP/1.1\r\nHost"), Head::Partial));
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(huge.as_bytes()),
            Head::Complete {
                route: Route::Respond { status: 431, .. },
                ..
            }
        ));
    }
}
