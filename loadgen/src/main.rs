//! `feedgate-loadgen`: load against any server that speaks feedgate's
//! PROTOCOL.md, measured end to end.
//!
//! - [`session`]: subscribed connections and measurement steps.
//! - [`publisher`]: the open-loop publisher (XADD or PUBLISH into Redis).
//! - [`pacing`]: when each message is due (coordinated-omission safe).
//! - [`delivery`]: the payload and reading it back from a delivery.
//! - [`stats`]: latency histogram, loss/duplicate/order/gap bookkeeping, and
//!   what each slow-consumer policy promises.
//! - [`slow`]: slow and stalled neighbours and their outcomes.
//! - [`wsclient`]: a lean WebSocket client.
//! - [`idle`], [`limit`]: memory per idle connection; the machine's ceiling.
//! - [`report`]: summaries, JSON, percentile distributions, plots.
//! - [`target`]: loopback-only targets, fd limits, source addresses.

mod delivery;
mod idle;
mod limit;
mod pacing;
mod publisher;
mod report;
mod session;
mod slow;
mod stats;
mod target;
mod wsclient;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::publisher::Kind;
use crate::session::{Session, Step, Target};
use crate::slow::{ExtraKind, ExtraOutcome};
use crate::stats::{Acceptance, Policy};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "feedgate-loadgen",
    version,
    about = "End-to-end load for servers that speak the feedgate protocol (loopback targets only)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N connections over C channels; publish open-loop at a fixed rate; report latency and loss.
    Fanout(FanoutArgs),
    /// Step the rate up until p99 crosses a bound or deliveries fall behind.
    Sweep(SweepArgs),
    /// Hold N idle subscribed connections and report the server's memory per connection.
    Idle(IdleArgs),
    /// The machine's ceiling: pre-built frames written to N loopback sockets, no protocol.
    Limit(LimitArgs),
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// WebSocket URL of the server under test (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Redis the server reads (loopback only).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Connections to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    connections: usize,
    /// Channels; connection i subscribes to channel i % C.
    #[arg(long, short = 'c', default_value_t = 10)]
    channels: usize,
    /// stream (XADD) or pubsub (PUBLISH).
    #[arg(long, value_enum, default_value = "stream")]
    kind: Kind,
    /// Channel name prefix [default: `lg.` for stream, `ps.lg.` for pubsub;
    /// with --policy P, `lg.P.` and `ps.lg.P.`].
    #[arg(long)]
    prefix: Option<String>,
    /// The slow-consumer policy the server applies to these channels. The
    /// server sets it per namespace (start it with e.g.
    /// `--namespace lg.conflate.=stream:conflate:sym`); this picks the channel
    /// prefix for it, the rule deliveries are counted by, and is recorded in
    /// the report.
    #[arg(long, value_enum)]
    policy: Option<Policy>,
    /// Instruments each channel's payloads cycle over, in field `sym` (`k0`, `k1`, ...),
    /// for servers that conflate by key.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    keys: u64,
    /// Source addresses to spread connections over (default: automatic past ~28k connections).
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<IpAddr>,
    /// Pin the load generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Write JSON, percentile distribution and SVG plot into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Base name of the files written with --out [default: the mode and parameters].
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Total publish rate, messages per second over all channels.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    rate: f64,
    /// Payload size in bytes.
    #[arg(long, short = 'p', default_value_t = 100)]
    payload: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Subscribe with `"max_rate": R` (messages per second per channel): each
    /// client then gets a conflated subset, counted as such.
    #[arg(long, value_parser = positive_rate)]
    max_rate: Option<f64>,
    /// Extra connections that subscribe, then never read until the run is over.
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// Extra connections that read one frame every --slow-read-ms.
    #[arg(long, default_value_t = 0)]
    slow: usize,
    /// Milliseconds a slow connection waits after each frame it reads.
    #[arg(long, default_value_t = 100, requires = "slow", value_parser = clap::value_parser!(u64).range(1..))]
    slow_read_ms: u64,
    /// Receive buffer (SO_RCVBUF) of the slow and stalled connections, so the
    /// server's queue, not the kernel's buffers, takes the backlog [default: the kernel's].
    #[arg(long)]
    slow_rcvbuf: Option<usize>,
    /// PID of the server, whose RSS is recorded before and after the run and
    /// whose CPU time over the measured window is reported per delivery.
    #[arg(long)]
    server_pid: Option<u32>,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("`{text}` is not a positive number of messages per second")),
    }
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// First rate, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    start_rate: f64,
    /// Each step multiplies the rate by this factor.
    #[arg(long, default_value_t = 1.5)]
    factor: f64,
    /// Stop when p99 latency exceeds this many microseconds.
    #[arg(long, default_value_t = 1000)]
    p99_bound_us: u64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 5_000_000.0)]
    max_rate: f64,
    #[arg(long, short = 'p', default_value_t = 100)]
    payload: usize,
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// PID of the server, whose CPU time over each step's window is reported
    /// per delivery.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// PID of the server whose RSS is read.
    #[arg(long)]
    pid: u32,
    /// Seconds to wait after the last subscribe before reading RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
}

#[derive(Args)]
struct LimitArgs {
    /// Sockets written to.
    #[arg(long, short = 'n', default_value_t = 1000)]
    connections: usize,
    /// Frame size in bytes.
    #[arg(long, default_value_t = 150)]
    frame_bytes: usize,
    /// Seconds per batch size.
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// CPU for the writer thread.
    #[arg(long)]
    writer_cpu: Option<usize>,
    /// CPU for the sink thread.
    #[arg(long)]
    sink_cpu: Option<usize>,
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feedgate-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Limit(args) => limit(args),
        Command::Fanout(args) => on_runtime(args.target.cpu, fanout(args)),
        Command::Sweep(args) => on_runtime(args.target.cpu, sweep(args)),
        Command::Idle(args) => on_runtime(args.target.cpu, idle(args)),
    }
}

fn on_runtime(cpu: Option<usize>, work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    if let Some(id) = cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(work)
}

/// The channel prefix: `--prefix`, else `lg.` (`ps.lg.` for pub/sub), with
/// the policy's name appended when one is given.
fn prefix(args: &TargetArgs) -> String {
    if let Some(p) = &args.prefix {
        return p.clone();
    }
    let base = match args.kind {
        Kind::Stream => "lg.",
        Kind::Pubsub => "ps.lg.",
    };
    match args.policy {
        Some(policy) => format!("{base}{}.", policy.as_str()),
        None => base.to_owned(),
    }
}

/// Extra (not measured) connections a fanout opens.
#[derive(Default)]
struct Extras {
    kinds: Vec<ExtraKind>,
    max_rate: Option<f64>,
    rcvbuf: Option<usize>,
}

fn target(args: &TargetArgs, extras: &Extras) -> anyhow::Result<Target> {
    let (ws, path) = target::ws_url(&args.url)?;
    let redis = target::redis_url(&args.redis)?;
    if args.connections == 0 || args.channels == 0 {
        anyhow::bail!("--connections and --channels must be at least 1");
    }
    let all = args.connections + extras.kinds.len();
    target::raise_fd_limit(all as u64 + 64)?;
    let prefix = prefix(args);
    Ok(Target {
        ws,
        path,
        redis,
        kind: args.kind,
        channels: (0..args.channels).map(|i| format!("{prefix}{i}")).collect(),
        sources: target::sources(all, &args.source_addrs)?,
        max_rate: extras.max_rate,
        keys: args.keys,
        acceptance: Acceptance::of(args.kind, args.policy, extras.max_rate),
        slow_rcvbuf: extras.rcvbuf,
    })
}

async fn open(args: &TargetArgs, extras: &Extras) -> anyhow::Result<Session> {
    let session = Session::open(target(args, extras)?, args.connections, &extras.kinds).await?;
    let s = &session.shared;
    eprintln!(
        "connected: {} subscribed, {} connect errors, {} protocol errors{}",
        s.subscribed.get(),
        s.connect_errors.get(),
        s.protocol_errors.get(),
        s.first_error
            .borrow()
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if s.subscribed.get() == 0 {
        anyhow::bail!("no connection subscribed; is the server at {} running?", args.url);
    }
    Ok(session)
}

fn summary(step: &Step) -> String {
    let l = &step.latency_us;
    format!(
        "offered {:.0} msg/s, published {} ({} errors); deliveries {} of {} expected, {:.0}/s in window\n\
         latency us: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} (n={})\n\
         lost {} duplicated {} out-of-order {}{}{}",
        step.rate_offered,
        step.published,
        step.publish_errors,
        step.deliveries,
        step.deliveries_expected,
        step.deliveries_per_sec,
        l.p50,
        l.p90,
        l.p99,
        l.p99_9,
        l.p99_99,
        l.max,
        l.count,
        step.lost,
        step.duplicated,
        step.out_of_order,
        subset_summary(step),
        cpu_summary(step)
    )
}

/// The server CPU line, when `--server-pid` was given.
fn cpu_summary(step: &Step) -> String {
    match (step.server_cpu_s, step.server_cpu_us_per_delivery) {
        (Some(s), Some(per)) => format!("\nserver cpu: {s:.2} s in window, {per:.2} us per delivery"),
        (Some(s), None) => format!("\nserver cpu: {s:.2} s in window, no deliveries"),
        _ => String::new(),
    }
}

/// The line a non-exact delivery rule (or anything it counts) adds.
fn subset_summary(step: &Step) -> String {
    let quiet = step.acceptance == Acceptance::Exact
        && step.gaps == 0
        && step.stale == 0
        && step.skipped == 0
        && step.keys_without_newest == 0;
    if quiet {
        return String::new();
    }
    let c = &step.per_client_deliveries_per_sec;
    format!(
        "\ncounted as {}: skipped {} (announced or conflated), stale {}, keys without their newest {}; \
         gaps {} ({} dropped, {} mismatched); per client {:.1}/s (min {:.1}, max {:.1})",
        step.acceptance.as_str(),
        step.skipped,
        step.stale,
        step.keys_without_newest,
        step.gaps,
        step.gap_dropped,
        step.gap_mismatches,
        c.mean,
        c.min,
        c.max
    )
}

/// One line per slow or stalled connection.
fn extras_summary(outcomes: &[ExtraOutcome]) -> String {
    outcomes
        .iter()
        .map(|o| {
            let how = match (o.end, o.close_code) {
                ("closed", Some(code)) => format!(
                    "closed with {code} ({}){}",
                    o.close_reason.as_deref().unwrap_or(""),
                    o.closed_after_s
                        .map(|s| format!(", read {s:.1} s after its subscribe"))
                        .unwrap_or_default()
                ),
                ("closed", None) => "closed without a code".to_owned(),
                ("failed", _) => format!("failed: {}", o.error.as_deref().unwrap_or("?")),
                ("eof", _) => "ended without a close frame".to_owned(),
                _ => "still open".to_owned(),
            };
            let every = o.read_every_ms.map(|ms| format!(" (one frame per {ms} ms)")).unwrap_or_default();
            format!(
                "{}{every} on {}: {how}; {} deliveries, {} gaps ({} dropped), {} silent holes, {} out of order, {} stale",
                o.kind,
                o.channel,
                o.deliveries,
                o.gaps,
                o.gap_dropped,
                o.counts.silent_holes,
                o.counts.out_of_order,
                o.counts.stale
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rss(pid: Option<u32>) -> anyhow::Result<Option<u64>> {
    pid.map(|pid| target::rss_bytes(pid).map_err(|e| anyhow::anyhow!("cannot read the RSS of --server-pid {pid}: {e}")))
        .transpose()
}

fn emit(
    args: &TargetArgs,
    mode: &str,
    default_name: String,
    json: serde_json::Value,
    step: &Step,
) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(&json)?);
    if let Some(dir) = &args.out {
        let name = args.name.clone().unwrap_or(default_name);
        report::write_files(dir, &name, &json, &step.hist, &format!("{mode} {name}"))?;
        eprintln!("wrote {}/{name}.{{json,hgrm,svg}}", dir.display());
    }
    Ok(())
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let every = Duration::from_millis(args.slow_read_ms);
    let extras = Extras {
        kinds: std::iter::repeat_n(ExtraKind::Stalled, args.stalled)
            .chain(std::iter::repeat_n(ExtraKind::Slow { every }, args.slow))
            .collect(),
        max_rate: args.max_rate,
        rcvbuf: args.slow_rcvbuf,
    };
    let mut session = open(t, &extras).await?;
    session.server_pid = args.server_pid;
    let rss_before = rss(args.server_pid)?;
    let step = session
        .step(
            args.rate,
            Duration::from_secs_f64(args.warmup),
            Duration::from_secs_f64(args.duration),
            args.payload,
        )
        .await?;
    // Read while the slow and stalled connections still hold what they hold.
    let rss_after = rss(args.server_pid)?;
    let outcomes = session.finish_extras().await;
    eprintln!("{}", summary(&step));
    let shared = &session.shared;
    if shared.protocol_errors.get() + shared.closed.get() > 0 {
        eprintln!(
            "measured connections: {} protocol errors, {} closed by the server (first error: {})",
            shared.protocol_errors.get(),
            shared.closed.get(),
            shared.first_error.borrow().as_deref().unwrap_or("none")
        );
    }
    if !outcomes.is_empty() {
        eprintln!("{}", extras_summary(&outcomes));
    }
    let json = json!({
        "mode": "fanout", "url": t.url, "kind": t.kind, "connections": t.connections, "channels": t.channels,
        "channel_prefix": prefix(t), "policy": t.policy, "keys": t.keys, "max_rate": args.max_rate,
        "payload_bytes": args.payload, "warmup_s": args.warmup, "duration_s": args.duration,
        "stalled": args.stalled, "slow": args.slow, "slow_read_ms": (args.slow > 0).then_some(args.slow_read_ms),
        "slow_rcvbuf": args.slow_rcvbuf,
        "server_rss_bytes": args.server_pid.map(|_| json!({"before": rss_before, "after": rss_after})),
        "connect_errors": shared.connect_errors.get(), "protocol_errors": shared.protocol_errors.get(),
        "closed": shared.closed.get(), "first_error": *shared.first_error.borrow(),
        "result": step, "extras": outcomes,
    });
    let mut name = format!(
        "fanout-{:?}-n{}-c{}-r{}-p{}",
        t.kind, t.connections, t.channels, args.rate, args.payload
    );
    if let Some(policy) = t.policy {
        name += &format!("-{}", policy.as_str());
    }
    if let Some(r) = args.max_rate {
        name += &format!("-maxrate{r}");
    }
    if args.stalled > 0 {
        name += &format!("-stalled{}", args.stalled);
    }
    if args.slow > 0 {
        name += &format!("-slow{}x{}ms", args.slow, args.slow_read_ms);
    }
    emit(t, "fanout", name.to_lowercase(), json, &step)
}

async fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let mut session = open(t, &Extras::default()).await?;
    session.server_pid = args.server_pid;
    let mut rate = args.start_rate;
    let mut best: Option<Step> = None;
    let mut steps = Vec::new();
    while rate <= args.max_rate {
        let step = session
            .step(
                rate,
                Duration::from_secs_f64(args.warmup),
                Duration::from_secs_f64(args.duration),
                args.payload,
            )
            .await?;
        eprintln!("rate {rate:.0}: {}", summary(&step).replace('\n', "; "));
        let behind = step.deliveries < step.deliveries_expected * 99 / 100;
        let over = step.latency_us.p99 > args.p99_bound_us;
        steps.push(step.clone());
        if behind || over || step.lost > 0 {
            break;
        }
        best = Some(step);
        rate *= args.factor;
    }
    match &best {
        Some(best) => eprintln!(
            "highest sustained: {:.0} deliveries/s with p99 {} us (bound {} us)",
            best.deliveries_per_sec, best.latency_us.p99, args.p99_bound_us
        ),
        None => eprintln!("no rate met the bound: even the first ({}) missed it", args.start_rate),
    }
    let json = json!({
        "mode": "sweep", "url": t.url, "kind": t.kind, "connections": t.connections, "channels": t.channels,
        "channel_prefix": prefix(t), "policy": t.policy, "keys": t.keys,
        "payload_bytes": args.payload, "p99_bound_us": args.p99_bound_us,
        "best_deliveries_per_sec": best.as_ref().map(|b| b.deliveries_per_sec), "best": best, "steps": steps,
    });
    let name = format!(
        "sweep-{:?}-n{}-c{}-p{}",
        t.kind, t.connections, t.channels, args.payload
    )
    .to_lowercase();
    let shown = best
        .as_ref()
        .or(steps.first())
        .ok_or_else(|| anyhow::anyhow!("no step ran"))?;
    emit(t, "sweep", name, json, shown)
}

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let report = idle::measure(
        target(t, &Extras::default())?,
        t.connections,
        args.pid,
        Duration::from_secs_f64(args.settle),
    )
    .await?;
    eprintln!(
        "{} of {} connections subscribed; server RSS {} -> {} bytes: {:.0} bytes per connection",
        report.subscribed, report.connections, report.rss_before, report.rss_after, report.bytes_per_connection
    );
    let json = json!({"mode": "idle", "url": t.url, "result": report});
    println!("{}", serde_json::to_string(&json)?);
    if let Some(dir) = &t.out {
        std::fs::create_dir_all(dir)?;
        let name = t.name.clone().unwrap_or_else(|| format!("idle-n{}", t.connections));
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&json)? + "\n",
        )?;
    }
    Ok(())
}

fn limit(args: LimitArgs) -> anyhow::Result<()> {
    target::raise_fd_limit(2 * args.connections as u64 + 64)?;
    let mut results = Vec::new();
    for batch in [1, 8] {
        let c = limit::measure(
            args.connections,
            args.frame_bytes,
            batch,
            Duration::from_secs_f64(args.duration),
            args.writer_cpu,
            args.sink_cpu,
        )?;
        eprintln!(
            "{} frames per write, {} sockets, {}-byte frames: {:.0} deliveries/s",
            c.frames_per_write, c.connections, c.frame_bytes, c.deliveries_per_sec
        );
        results.push(c);
    }
    let json = json!({"mode": "limit", "results": results});
    println!("{}", serde_json::to_string(&json)?);
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(format!("limit-n{}.json", args.connections)),
            serde_json::to_string_pretty(&json)? + "\n",
        )?;
    }
    Ok(())
}
