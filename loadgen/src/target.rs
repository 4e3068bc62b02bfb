//! Where load may go (loopback only), how many sockets the process may open,
//! and the source addresses that spread connections past one address's ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Ports one source address offers to connections to one target (Linux's default
/// ephemeral range is about 28k).
pub const PORTS_PER_SOURCE: usize = 28_000;

/// Resolves `host:port` and refuses anything that is not a loopback address.
pub fn loopback(text: &str) -> anyhow::Result<SocketAddr> {
    let addr = text
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("`{text}` is not an address: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("`{text}` resolves to no address"))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!("refusing to send load to {addr}: only loopback targets (127.0.0.0/8, ::1) are allowed");
    }
    Ok(addr)
}

/// The `host:port` of a `ws://host:port/path` URL and its path.
pub fn ws_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("`{url}` must start with ws://"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/ws".to_owned()),
    };
    Ok((loopback(hostport)?, path))
}

/// The `host:port` of a `redis://host:port` URL.
pub fn redis_url(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed: feedgate_core::config::RedisUrl = url.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    loopback(&format!("{}:{}", parsed.host, parsed.port))
}

/// Source addresses for `connections` connections: none (the kernel picks) when
/// one address has ports enough, else 127.0.0.1, 127.0.0.2, ...
pub fn sources(connections: usize, given: &[IpAddr]) -> anyhow::Result<Vec<IpAddr>> {
    if !given.is_empty() {
        if let Some(bad) = given.iter().find(|ip| !ip.is_loopback()) {
            anyhow::bail!("source address {bad} is not a loopback address");
        }
        return Ok(given.to_vec());
    }
    if connections <= PORTS_PER_SOURCE {
        return Ok(Vec::new());
    }
    let needed = connections.div_ceil(PORTS_PER_SOURCE);
    Ok((1..=needed as u8)
        .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .collect())
}

/// Raises RLIMIT_NOFILE to its hard limit and checks that `needed` sockets fit.
pub fn raise_fd_limit(needed: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            anyhow::bail!("getrlimit failed: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            anyhow::bail!("setrlimit failed: {}", std::io::Error::last_os_error());
        }
    }
    if needed > lim.rlim_cur {
        anyhow::bail!(
            "{needed} sockets asked for, but this process may open only {} files (RLIMIT_NOFILE hard limit); raise it (ulimit -Hn, LimitNOFILE) or ask for fewer connections",
            lim.rlim_cur
        );
    }
    Ok(lim.rlim_cur)
}

/// Resident set size of process `pid` in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad VmRSS line: {line}"))?;
    Ok(kb * 1024)
}

/// CPU seconds (user + system, every thread) process `pid` has used, from
/// `/proc/PID/stat` (clock-tick resolution, 10 ms on most kernels).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("cannot read /proc/{pid}/stat: {e}"))?;
    cpu_seconds_of(&stat, clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of a `/proc/PID/stat` line, in seconds. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_seconds_of(stat: &str, ticks_per_sec: f64) -> anyhow::Result<f64> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("malformed /proc stat line"))?;
    // After the name: state (field 3) ... utime (14), stime (15).
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || -> anyhow::Result<f64> {
        fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64 / ticks_per_sec)
            .ok_or_else(|| anyhow::anyhow!("malformed /proc stat line"))
    };
    Ok(next()? + next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_utime_plus_stime_after_the_command_name() {
        let line = "4242 (my (odd) server) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 3";
        assert_eq!(cpu_seconds_of(line, 100.0).unwrap(), 4.0);
        assert!(cpu_seconds_of("4242 (x) S 1 2", 100.0).is_err());
        let own = cpu_seconds(std::process::id()).unwrap();
        assert!(own >= 0.0);
    }

    #[test]
    fn only_loopback_targets() {
        assert!(loopback("127.0.0.1:80").is_ok());
        assert!(loopback("127.3.2.1:80").is_ok());
        assert!(loopback("[::1]:80").is_ok());
        let err = loopback("10.0.0.1:80").unwrap_err().to_string();
        assert!(err.contains("only loopback"), "{err}");
        assert!(ws_url("ws://192.168.1.1:8080/ws").is_err());
        assert!(redis_url("redis://8.8.8.8:6379").is_err());
        assert_eq!(ws_url("ws://127.0.0.1:9/ws?x=1").unwrap().1, "/ws?x=1");
    }

    #[test]
    fn spreads_sources_past_one_address() {
        assert!(sources(1000, &[]).unwrap().is_empty());
        let s = sources(60_000, &[]).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(IpAddr::is_loopback));
        assert!(sources(10, &["10.1.1.1".parse().unwrap()]).is_err());
    }
}
