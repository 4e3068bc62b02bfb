//! `--busy-poll`: on io_uring the core spins instead of parking (it burns its
//! CPU while idle) yet serves clients and fires its timers; on the epoll driver
//! the mode is refused with a warning and the core parks as usual.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;
use tungstenite::Message;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let (_, rest) = stat.rsplit_once(')').expect("stat line");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15, i.e. 11 and 12 after the state.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf reads a constant.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[test]
fn a_busy_polling_core_spins_yet_serves_and_keeps_its_timers() {
    let epoll = std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some();
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .cores(1)
        .flag("busy-poll", "true")
        .flag("ping-interval-ms", 300)
        .flag("write-delay-us", 100_000)
        .start();
    let mut client = fg.connect();
    client.sub("bp.a");

    // Idle: the core spins on io_uring, and parks on epoll.
    let before = cpu_seconds(fg.pid());
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_seconds(fg.pid()) - before;
    if epoll {
        assert!(used < 0.5, "a parked core used {used:.2} s of CPU in 1.5 s");
        assert!(
            fg.stderr().contains("--busy-poll needs the io_uring driver"),
            "{}",
            fg.stderr()
        );
    } else {
        assert!(used > 0.3, "a busy-polling core used only {used:.2} s of CPU in 1.5 s");
    }

    // Timers still fire: the keepalive's pings and the write delay's wait.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no ping within 5 s at a 300 ms interval");
        if let Message::Ping(_) = client.read_message() {
            break;
        }
    }
    let mut con = redis.conn();
    let sent = Instant::now();
    xadd_data(&mut con, "bp.a", b"{\"i\":1}");
    assert_eq!(client.recv_json()["data"], json!({"i": 1}));
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(80),
        "the 100 ms write delay took only {took:?}"
    );
}
