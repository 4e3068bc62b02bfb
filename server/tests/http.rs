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
    assert!(
        (400..500).contains(&resp.status),
        "GET /ws without Upgrade: {}",
        resp.head
    );
}
