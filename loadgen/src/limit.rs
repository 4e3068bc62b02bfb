//! The machine's own ceiling with no protocol at all: one io_uring thread
//! writes a pre-built frame to N loopback sockets round after round while a
//! sink thread reads them all. Every results file quotes feedgate against it.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;

/// The ceiling measured at one batch size.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ceiling {
    pub frames_per_write: usize,
    pub connections: usize,
    pub frame_bytes: usize,
    pub deliveries_per_sec: f64,
}

fn runtime() -> anyhow::Result<
    monoio::FusionRuntime<
        monoio::time::TimeDriver<monoio::IoUringDriver>,
        monoio::time::TimeDriver<monoio::LegacyDriver>,
    >,
> {
    Ok(monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?)
}

fn pin(cpu: Option<usize>) {
    if let Some(id) = cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Runs the ceiling for `duration` with `batch` frames per write.
pub fn measure(
    connections: usize,
    frame_bytes: usize,
    batch: usize,
    duration: Duration,
    writer_cpu: Option<usize>,
    sink_cpu: Option<usize>,
) -> anyhow::Result<Ceiling> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let frame = feedgate_core::frame::text(&vec![b'x'; frame_bytes.saturating_sub(4).max(1)]);
    let frame_len = frame.len();
    let read_bytes = Arc::new(AtomicU64::new(0));
    let counter = read_bytes.clone();
    let sink = std::thread::spawn(move || -> anyhow::Result<()> {
        pin(sink_cpu);
        let mut rt = runtime()?;
        listener.set_nonblocking(true)?;
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::from_std(listener)?;
            let mut tasks = Vec::new();
            for _ in 0..connections {
                let (mut s, _) = listener.accept().await?;
                let counter = counter.clone();
                tasks.push(monoio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let (r, b) = s.read(buf).await;
                        buf = b;
                        match r {
                            Ok(n) if n > 0 => counter.fetch_add(n as u64, Ordering::Relaxed),
                            _ => break,
                        };
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            Ok(())
        })
    });
    pin(writer_cpu);
    let mut rt = runtime()?;
    let elapsed = rt.block_on(write_rounds(addr, connections, frame, batch, duration))?;
    let total = read_bytes.load(Ordering::Relaxed);
    sink.join().map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    Ok(Ceiling {
        frames_per_write: batch,
        connections,
        frame_bytes: frame_len,
        deliveries_per_sec: (total / frame_len as u64) as f64 / elapsed.as_secs_f64(),
    })
}

/// A batch of `n` clones of one frame, as the server's writer sends them.
struct Batch(Vec<Bytes>, Vec<libc::iovec>);

// SAFETY: the iovecs point into the `Bytes` of field 0, which are immutable
// and heap-allocated, so they stay valid while the runtime owns the batch.
unsafe impl monoio::buf::IoVecBuf for Batch {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.1.as_ptr()
    }
    fn read_iovec_len(&self) -> usize {
        self.1.len()
    }
}

async fn write_rounds(
    addr: SocketAddr,
    connections: usize,
    frame: Bytes,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<Duration> {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let stream = TcpStream::connect_addr(addr).await?;
        // As the server does: small frames go out at once, not held by Nagle.
        stream.set_nodelay(true)?;
        streams.push(stream);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let frame = Rc::new(frame);
    let mut tasks = Vec::new();
    for mut s in streams {
        let frame = frame.clone();
        tasks.push(monoio::spawn(async move {
            let bufs: Vec<Bytes> = (0..batch).map(|_| (*frame).clone()).collect();
            let iovecs = bufs
                .iter()
                .map(|b| libc::iovec {
                    iov_base: b.as_ptr() as *mut _,
                    iov_len: b.len(),
                })
                .collect();
            let mut batch = Batch(bufs, iovecs);
            let whole: usize = batch.0.iter().map(Bytes::len).sum();
            while Instant::now() < deadline {
                let (r, b) = s.writev(batch).await;
                batch = b;
                match r {
                    // A partial write would split a frame: the ceiling counts
                    // bytes, so the rest is simply written next round.
                    Ok(n) if n > 0 && n <= whole => {}
                    _ => break,
                }
            }
            // End the stream now: monoio closes fds through the ring, and the
            // ring is no longer polled once this runtime's work is done, so a
            // plain drop would leave the sink waiting for a FIN forever.
            // SAFETY: shutdown on the stream's own open fd has no memory effects.
            unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&s), libc::SHUT_WR) };
        }));
    }
    for t in tasks {
        t.await;
    }
    Ok(start.elapsed())
}
