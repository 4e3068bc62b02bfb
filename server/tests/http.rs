//! Plain HTTP on the WebSocket port (PROTOCOL.md section 4): health, readiness,
//! unknown paths, malformed requests. Readiness with Redis down is in faults.rs.

mod support;

use support::*;

#[test]
fn healthz_and_readyz_answer_200_when_all_is_up() {
    let (_redis, fg) = start_default();
    assert_eq!(fg.get("/healthz").status, 200);
    assert_eq!(fg.get("/readyz").status, 200);
}

#[test]
fn unknown_paths_are_404() {
    let (_redis, fg) = start_default();
    for path in ["/nope", "/healthz/extra", "/wsx", "/ws/more", "/READYZ"] {
        assert_eq!(fg.get(path).status, 404, "GET {path}");
    }
    // A WebSocket upgrade anywhere but /ws is refused as well.
    let (head, upgraded) = RawWs::handshake(fg.addr(), "/elsewhere");
    assert!(upgraded.is_none(), "upgraded on /elsewhere: {head}");
    assert_eq!(head.split_whitespace().nth(1), Some("404"), "{head}");
}

#[test]
fn malformed_requests_are_400_and_the_server_keeps_serving() {
    let (_redis, fg) = start_default();
    let requests: [&[u8]; 4] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon in this header\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost\x01: x\r\n\r\n",
    ];
    for raw in requests {
        let resp = http_request(fg.addr(), raw).unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(raw)));
        assert_eq!(resp.status, 400, "{:?} got {}", String::from_utf8_lossy(raw), resp.head);
    }
    assert_eq!(fg.get("/healthz").status, 200);
    fg.connect().assert_alive();
}

#[test]
fn plain_get_on_ws_without_upgrade_is_a_client_error() {
    let (_redis, fg) = start_default();
    let resp = fg.get("/ws");
    assert_eq!(resp.status, 400, "GET /ws without Upgrade: {}", resp.head);
}

/// The value of header `name` in a response head (case-insensitive name).
fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

//= rfc9110#section-15.5.6
//# The origin server MUST generate an Allow header field in a 405 response
//# containing a list of the target resource's currently supported methods.
#[test]
fn post_healthz_is_405_with_allow_get() {
    let (_redis, fg) = start_default();
    let addr = fg.addr();
    let requests = [
        format!("POST /healthz HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        format!("POST /healthz HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"),
        format!("DELETE /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        format!("PUT /ws HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    ];
    for raw in &requests {
        let line = raw.lines().next().unwrap();
        let resp = http_request(addr, raw.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(resp.status, 405, "{line}: {}", resp.head);
        assert_eq!(
            header_value(&resp.head, "allow"),
            Some("GET"),
            "{line}: a 405 must carry `Allow: GET`; head:\n{}",
            resp.head
        );
    }
    // Still serving, and a 404 carries no Allow.
    assert_eq!(fg.get("/healthz").status, 200);
    let not_found = fg.get("/nope");
    assert_eq!(not_found.status, 404);
    assert_eq!(header_value(&not_found.head, "allow"), None, "{}", not_found.head);
}
