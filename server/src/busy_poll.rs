//! `--busy-poll`: a core that never parks in the kernel while idle.
//!
//! monoio parks a core in `io_uring_enter` (or `epoll_wait`) whenever no task is
//! ready, and waking from there costs a scheduler round trip. This task keeps
//! one poll always complete: it waits for readiness of a socket that is always
//! readable (one byte written to a socket pair and never read): on io_uring
//! each wait is a `PollAdd` that completes as soon as it is submitted, so each
//! park finds a completion and returns at once, after the runtime has reaped
//! I/O and fired due timers. Yielding in a loop would not do: monoio only reaps
//! timers when it parks, so a task that is always ready would starve them.
//!
//! On the epoll driver readiness is answered from a cache without parking, so
//! the same loop would spin inside one poll and stop the core: there the mode
//! is refused with a warning and the core parks as usual.

use std::io::Write;

use anyhow::Context;
use monoio::net::UnixStream;

/// Spins the current core until the process stops. Costs the whole core
/// (100 % CPU) for lower wake-up latency.
pub async fn run(io_uring: bool) -> anyhow::Result<()> {
    if !io_uring {
        tracing::warn!("--busy-poll needs the io_uring driver; this core parks while idle");
        return Ok(());
    }
    let (mut ready, idle) = std::os::unix::net::UnixStream::pair().context("busy poll: socket pair")?;
    ready.write_all(b"!").context("busy poll: priming the socket pair")?;
    idle.set_nonblocking(true).context("busy poll: socket pair")?;
    let idle = UnixStream::from_std(idle).context("busy poll: adopting the socket pair")?;
    loop {
        idle.readable(false).await.context("busy poll: readiness")?;
    }
}
