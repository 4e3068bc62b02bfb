#![no_main]
//! The server's WebSocket read path without a socket: the input arrives in
//! pieces, `ws_decode` cuts frames out of the bytes held as server/src/ws.rs
//! does, and the inbound policy decides (`checks::ws_read`).

#[path = "../common/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::ws_read(data);
});
