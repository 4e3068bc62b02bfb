//! The process's life: a core that fails stops the process with exit 1, and a
//! shutdown closes every WebSocket with 1001, including one whose upgrade
//! completes during the drain, within the drain and linger bounds.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn a_core_that_panics_stops_the_process_with_exit_1() {
    let redis = Redis::start();
    let exited = Feedgate::builder(&redis)
        .env("FEEDGATE_DEBUG_PANIC_CORE", 1)
        .run_to_exit();
    assert_eq!(
        exited.status.code(),
        Some(1),
        "a panicking core must exit 1 (not 101, not keep serving); stderr:\n{}",
        exited.stderr
    );
    assert!(
        exited.stderr.contains("core failed; stopping the process"),
        "the log says why: {}",
        exited.stderr
    );
}

/// Reads one HTTP response head and the frames after it until EOF.
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn an_upgrade_completed_during_the_drain_is_closed_with_1001_and_the_process_exits_in_time() {
    let redis = Redis::start();
    let mut fg = Feedgate::start(&redis);
    // Clients that never answer the close keep both cores draining (the kernel
    // spreads sixteen connections over both listeners).
    let silent: Vec<RawWs> = (0..16).map(|_| RawWs::connect(fg.addr())).collect();
    let mut late = TcpStream::connect(fg.addr()).expect("connect");
    late.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        fg.addr()
    );
    late.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let signalled = Instant::now();
    fg.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    late.write_all(b"\r\n").unwrap();
    let bytes = read_all(&mut late);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 101"), "the upgrade completes: {text}");
    let end = text.find("\r\n\r\n").expect("a complete head") + 4;
    let frame = &bytes[end..];
    assert!(frame.len() >= 4 && frame[0] == 0x88, "a close frame follows: {frame:?}");
    assert_eq!(u16::from_be_bytes([frame[2], frame[3]]), 1001, "closed as going away");

    let status = fg.wait_exit();
    let took = signalled.elapsed();
    assert!(status.success(), "shutdown exits 0: {status:?}");
    // 3 s of drain, then each writer's 2 s linger at most, and a margin.
    assert!(took < Duration::from_secs(7), "exited {took:?} after SIGTERM");
    drop(silent);
}

/// The test runs label themselves by driver (scripts/test.sh): the server must
/// run the one asked for, so a host without io_uring cannot pass the io_uring
/// run on epoll unnoticed. `FEEDGATE_TEST_ALLOW_EPOLL=1` accepts epoll for a run
/// on such a host, on purpose.
#[test]
fn every_core_runs_the_driver_the_run_asks_for() {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    let forced_epoll = std::env::var("MONOIO_FORCE_LEGACY_DRIVER")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"));
    let allow_epoll = std::env::var_os("FEEDGATE_TEST_ALLOW_EPOLL").is_some();
    let stderr = fg.stderr();
    let started: Vec<&str> = stderr.lines().filter(|l| l.contains("core started")).collect();
    assert_eq!(started.len(), 2, "one line per core: {stderr}");
    for line in started {
        let uring = line.contains("driver=\"io_uring\"") || line.contains("driver=io_uring");
        let epoll = line.contains("driver=\"epoll\"") || line.contains("driver=epoll");
        if forced_epoll {
            assert!(epoll, "MONOIO_FORCE_LEGACY_DRIVER is set: {line}");
        } else {
            assert!(uring || (allow_epoll && epoll), "expected io_uring: {line}");
        }
    }
}
