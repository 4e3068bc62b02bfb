//! `feedgate`: streams Redis Streams and pub/sub to WebSocket clients.
//!
//! - [`settings`]: flags, environment and TOML file, merged and checked.
//! - [`runtime`]: one pinned thread and monoio runtime per core; shutdown.
//! - [`listener`]: SO_REUSEPORT listeners, one per core.
//! - [`accept`]: accepting connections and routing their HTTP request.
//! - [`admission`]: connection limits per process and per source IP.
//! - [`ws`]: a WebSocket connection's reader and its ops.
//! - [`conn`]: a connection's queue, closing handshake and writer task.
//! - [`keepalive`]: pings, and closing clients that stopped answering.
//! - [`writev`]: vectored writes of shared frames.
//! - [`subscribe`]: subscribe, unsubscribe and replays.
//! - [`hub`]: channel -> local subscribers, fan-out.
//! - [`redis`]: the RESP3 connection and the per-core Redis links.
//! - [`core`]: a core's shared state.
//! - [`notify`], [`reader`]: single-threaded wake-ups; socket read helpers.

mod accept;
mod admission;
mod busy_poll;
mod conn;
mod core;
mod hub;
mod keepalive;
mod listener;
mod notify;
mod reader;
mod redis;
mod runtime;
mod settings;
mod snapshot;
mod subscribe;
mod throttle;
mod writev;
mod ws;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::settings::{Cli, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::resolve(cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("feedgate: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&settings.log) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("feedgate: config key `log`: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    for name in settings::unknown_env_vars() {
        tracing::warn!(variable = %name, "unknown FEEDGATE_ environment variable ignored");
    }
    tracing::warn!("auth is OFF: every client may subscribe to every channel");
    match runtime::run(Arc::new(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("feedgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
