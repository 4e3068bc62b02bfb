//! A full descriptor table: accept fails with EMFILE. The server must not spin
//! or log on every attempt, must shed the connections it cannot take (they see
//! the socket closed, rather than hanging in the backlog), and must serve again
//! once descriptors are free.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Sets the process's soft descriptor limit (`None`: back to its hard limit),
/// which needs no privilege, unlike raising a hard limit.
fn set_fd_limit(pid: u32, soft: Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads the new limit and writes the old one into `lim`.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = soft.unwrap_or(lim.rlim_max);
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the comm.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_full_fd_table_sheds_connections_without_spinning_and_recovers() {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    let pid = fg.pid();
    set_fd_limit(pid, Some(open_fds(pid) + 6));

    let mut clients: Vec<Option<TcpStream>> = (0..40)
        .map(|_| {
            let s = TcpStream::connect(fg.addr()).expect("the kernel completes the handshake");
            s.set_nonblocking(true).unwrap();
            Some(s)
        })
        .collect();
    let ticks_before = cpu_ticks(pid);
    let window = Instant::now();

    // Every connection the server could not take is closed (EOF or reset),
    // not left hanging: a few were accepted and wait for their head.
    let mut shed = 0;
    while shed < 30 && window.elapsed() < Duration::from_secs(8) {
        for slot in clients.iter_mut() {
            let Some(client) = slot else { continue };
            let mut byte = [0u8; 1];
            match client.read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => {
                    shed += 1;
                    *slot = None;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(shed >= 30, "only {shed} of 40 connections were shed");
    let spent = cpu_ticks(pid) - ticks_before;
    let elapsed = window.elapsed();
    // Clock ticks are 1/100 s here: a spinning accept loop burns a whole core.
    assert!(
        (spent as f64) < elapsed.as_secs_f64() * 100.0 * 0.5,
        "{spent} ticks of CPU in {elapsed:?} while out of descriptors"
    );
    // Every shed connection was a failed accept: logging each would give at
    // least 30 lines. A descriptor freed elsewhere in the process (a Redis
    // reconnect) can let one accept through and start a new episode, so a few
    // lines are fine.
    let warnings = fg.stderr().matches("accept failed").count();
    assert!(
        (1..=6).contains(&warnings),
        "logged once per core and episode, not per attempt: {warnings} lines for {shed} shed"
    );

    set_fd_limit(pid, None);
    let mut con = redis.conn();
    let mut client = fg.connect();
    client.sub("md.after-emfile");
    assert_delivers(&mut con, &mut client, "md.after-emfile");
    assert!(
        fg.stderr().contains("accepting connections again"),
        "recovery is logged"
    );
}
