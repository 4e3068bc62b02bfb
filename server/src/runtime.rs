//! Thread-per-core: one pinned OS thread per core, each with its own monoio
//! runtime (io_uring, or epoll where io_uring cannot be set up), listener and
//! Redis links; and the process's shutdown on SIGTERM or SIGINT.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_channel::oneshot;
use monoio::FusionDriver;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::accept::accept_loop;
use crate::admission::Admission;
use crate::busy_poll;
use crate::conn::{close_code, WriteStats, WRITES};
use crate::core::{Core, Readiness};
use crate::keepalive;
use crate::listener;
use crate::redis;
use crate::settings::Settings;
use crate::throttle;

/// How long shutdown waits for clients to finish the closing handshake.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Each core thread's stack, chosen rather than left at Rust's 2 MiB default.
/// Nothing on a core recurses on outside input (client JSON is depth-checked
/// before parsing, RESP replies are depth-bounded), so this is a second line of
/// defence: the 8 MiB a Linux main thread gets, which costs address space
/// only until touched, and leaves headroom for simd-json and redis-protocol
/// on the deepest input they are allowed.
const CORE_STACK: usize = 8 * 1024 * 1024;

/// Runs every core until SIGTERM or SIGINT, then drains and returns.
pub fn run(settings: Arc<Settings>) -> anyhow::Result<()> {
    raise_fd_limit();
    let listeners = listener::bind_all(settings.listen, settings.cores)?;
    let bound = listeners[0].local_addr().context("listener address")?;
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let signal_handle = signals.handle();
    let failed = Arc::new(AtomicBool::new(false));
    let readiness = Arc::new(Readiness::new(settings.cores));
    let admission = Admission::new(settings.limits.max_connections, settings.limits.max_connections_per_ip);
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    tracing::info!(listen = %bound, cores = settings.cores, redis = %settings.redis_addr, "feedgate starting");

    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for (index, std_listener) in listeners.into_iter().enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let settings = settings.clone();
        let readiness = readiness.clone();
        let admission = admission.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        let failed = failed.clone();
        let signal_handle = signal_handle.clone();
        let thread = std::thread::Builder::new()
            .name(format!("feedgate-core-{index}"))
            .stack_size(CORE_STACK)
            .spawn(move || {
                let core = || run_core(index, cpu, settings, std_listener, readiness, admission, stop_rx);
                // A core that fails, by error or by panic, takes the process
                // down (exit 1, so systemd restarts it) rather than leaving it
                // serving on some cores and not others.
                let error = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(core)) {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(panic) => panic_text(&*panic),
                };
                tracing::error!(core = index, error, "core failed; stopping the process");
                failed.store(true, Ordering::SeqCst);
                signal_handle.close();
            })
            .context("spawning a core thread")?;
        threads.push(thread);
    }

    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "shutting down: closing clients with 1001");
    } else {
        tracing::info!("shutting down after a core failed: closing clients with 1001");
    }
    for stop in stops {
        let _ = stop.send(());
    }
    for thread in threads {
        if thread.join().is_err() {
            failed.store(true, Ordering::SeqCst);
        }
    }
    if failed.load(Ordering::SeqCst) {
        anyhow::bail!("a core failed; see the log above");
    }
    tracing::info!("stopped");
    Ok(())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("panicked: {text}")
}

/// Every connection is a file descriptor: lift the soft limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if raised {
        tracing::info!(max_open_files = lim.rlim_cur, "file descriptor limit");
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not raise the file descriptor limit");
    }
}

fn run_core(
    index: usize,
    cpu: Option<core_affinity::CoreId>,
    settings: Arc<Settings>,
    std_listener: std::net::TcpListener,
    readiness: Arc<Readiness>,
    admission: Arc<Admission>,
    stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(cpu) {
            tracing::warn!(core = index, cpu = cpu.id, "could not pin thread to its CPU");
        }
    }
    let driver = if monoio::utils::detect_uring() {
        "io_uring"
    } else {
        "epoll"
    };
    let mut runtime = monoio::RuntimeBuilder::<FusionDriver>::new()
        .enable_timer()
        .build()
        .context("building the monoio runtime")?;
    tracing::info!(core = index, cpu = cpu.map(|c| c.id), driver, "core started");
    runtime.block_on(async move {
        let core = Rc::new(Core::new(index, settings, readiness, admission));
        fail_for_tests(index);
        let listener = monoio::net::TcpListener::from_std(std_listener).context("adopting the listener")?;
        redis::start(&core);
        monoio::spawn(keepalive::run(core.clone()));
        monoio::spawn(throttle::run(core.clone()));
        if core.settings.busy_poll {
            monoio::spawn(async move {
                if let Err(e) = busy_poll::run(driver == "io_uring").await {
                    tracing::warn!(core = index, error = %format!("{e:#}"), "busy poll stopped; the core parks while idle");
                }
            });
        }
        let acceptor = monoio::spawn(accept_loop(core.clone(), listener));
        let _ = stop.await;
        core.shutdown.set();
        acceptor.await;
        let conns: Vec<_> = core.conns.borrow().values().cloned().collect();
        for conn in conns {
            conn.close(close_code::GOING_AWAY, "server shutting down");
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !core.conns.borrow().is_empty() && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let (batches, frames) = WRITES.with(WriteStats::totals);
        let per_batch = if batches == 0 { 0.0 } else { frames as f64 / batches as f64 };
        tracing::info!(core = index, batches, frames, per_batch = format!("{per_batch:.2}"), "frames written to clients");
        Ok(())
    })
}

/// Test builds only: `FEEDGATE_DEBUG_PANIC_CORE=N` panics core N once it has
/// started, so the tests can show that a failed core stops the process.
fn fail_for_tests(index: usize) {
    if cfg!(debug_assertions) && std::env::var("FEEDGATE_DEBUG_PANIC_CORE").is_ok_and(|v| v.parse() == Ok(index)) {
        panic!("FEEDGATE_DEBUG_PANIC_CORE={index}");
    }
}
