//! Memory per idle connection: the server's RSS before and after N subscribed
//! connections that receive nothing.

use std::time::Duration;

use crate::session::{Session, Target};
use crate::target::rss_bytes;

/// What holding idle connections cost the server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleReport {
    pub connections: usize,
    pub subscribed: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub bytes_per_connection: f64,
}

/// Opens `connections`, waits `settle`, and compares the RSS of `pid`.
pub async fn measure(target: Target, connections: usize, pid: u32, settle: Duration) -> anyhow::Result<IdleReport> {
    let rss_before = rss_bytes(pid)?;
    let session = Session::open(target, connections, &[]).await?;
    monoio::time::sleep(settle).await;
    let rss_after = rss_bytes(pid)?;
    let subscribed = session.shared.subscribed.get();
    Ok(IdleReport {
        connections,
        subscribed,
        rss_before,
        rss_after,
        bytes_per_connection: rss_after.saturating_sub(rss_before) as f64 / subscribed.max(1) as f64,
    })
}
