//! Shared harness for feedgate's end-to-end tests.
//!
//! Every test starts its own `redis-server` and its own `feedgate` binary on free
//! loopback ports and talks to them over real sockets: no mocks. Both processes
//! are killed when their guard drops, also when the test panics; feedgate's
//! stdout and stderr go to files that are printed when a test fails.
//!
//! Every socket read has a timeout ([`READ_TIMEOUT`]) and every wait a deadline
//! ([`STARTUP_TIMEOUT`]), so a broken server fails a test instead of hanging it.
//! These bounds only stop waiting: no assertion is about how fast anything is.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Longest wait for one socket read before a test fails instead of hanging.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a process to start, stop, or change state.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration every test uses unless it says otherwise: channels starting
/// with `ps.` are pub/sub, everything else is a Redis stream.
pub const PUBSUB_CONFIG: &str = "[[namespaces]]\nprefix = \"ps.\"\nsource = \"pubsub\"\n";

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// A free loopback port (the OS picks it; a start that loses a race retries).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls `ready` until it holds; fails the test naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, at most `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `ready` until it holds (`Ok`) or `child` exits first (`Err`); fails
/// the test naming `what` after [`STARTUP_TIMEOUT`].
fn wait_ready_or_exit(child: &mut Child, what: &str, mut ready: impl FnMut() -> bool) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Err(status);
        }
        if ready() {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {STARTUP_TIMEOUT:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_file(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A directory removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("feedgate-e2e-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn log_file(&self, name: &str) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join(name))
            .unwrap_or_else(|e| panic!("open {name}: {e}"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// A `redis-server` of this test's own, killed on drop.
pub struct Redis {
    port: u16,
    persistent: bool,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    /// A throwaway Redis: no RDB, no AOF.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// A Redis that loses nothing across [`Redis::stop`] and [`Redis::restart`]:
    /// AOF on, fsync on every write, data in this test's temp dir.
    pub fn start_persistent() -> Self {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> Self {
        let mut redis = Redis {
            port: 0,
            persistent,
            child: None,
            dir: TempDir::new("redis"),
        };
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server would not start; its log:\n{}", redis.log());
    }

    /// Starts the process on `self.port`; false when it exited (port taken).
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        // DEBUG SLEEP lets a test make Redis stop answering with its sockets open.
        cmd.args([
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--enable-debug-command",
            "yes",
        ])
        .arg("--dir")
        .arg(self.dir.path());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(self.dir.log_file("redis.log"))
            .stderr(self.dir.log_file("redis.log"));
        let url = self.url();
        let child = self
            .child
            .insert(cmd.spawn().expect("spawn redis-server (is it installed?)"));
        let what = format!("redis-server at {url} to answer PING");
        if wait_ready_or_exit(child, &what, || answers_ping(&url)).is_err() {
            self.child = None; // exited: most likely the port was taken
            return false;
        }
        true
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new synchronous connection.
    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let con = client
            .get_connection_with_timeout(READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis at {}: {e}", self.url()));
        con.set_read_timeout(Some(READ_TIMEOUT))
            .expect("set redis read timeout");
        con
    }

    /// Shuts Redis down as an operator would (`SHUTDOWN`) and waits for the exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        // The reply is the connection closing, so the result says nothing.
        let _ = redis::cmd("SHUTDOWN").query::<redis::Value>(&mut self.conn());
        if wait_child(&mut child, STARTUP_TIMEOUT).is_none() {
            kill_child(&mut child);
            panic!("redis-server did not exit after SHUTDOWN");
        }
    }

    /// Starts Redis again on the same port with the same data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}; log:\n{}",
            self.port,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        read_file(&self.dir.path().join("redis.log"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
    }
}

fn answers_ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return false;
    };
    let _ = con.set_read_timeout(Some(Duration::from_secs(1)));
    matches!(redis::cmd("PING").query::<String>(&mut con), Ok(pong) if pong == "PONG")
}

/// Runs one Redis command given as words; panics with the command on error.
pub fn redis_cmd<T: redis::FromRedisValue>(con: &mut redis::Connection, words: &[&str]) -> T {
    let mut cmd = redis::cmd(words[0]);
    for w in &words[1..] {
        cmd.arg(*w);
    }
    cmd.query(con).unwrap_or_else(|e| panic!("redis {words:?}: {e}"))
}

/// `XADD key * f1 v1 f2 v2 ...`, fields given flat; returns the new id.
pub fn xadd(con: &mut redis::Connection, key: &str, fields: &[&[u8]]) -> String {
    assert!(
        !fields.is_empty() && fields.chunks(2).all(|pair| pair.len() == 2),
        "fields come in name, value pairs"
    );
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for f in fields {
        cmd.arg(*f);
    }
    cmd.query(con).unwrap_or_else(|e| panic!("XADD {key}: {e}"))
}

/// `XADD key * data <data>`; returns the new id.
pub fn xadd_data(con: &mut redis::Connection, key: &str, data: &[u8]) -> String {
    xadd(con, key, &[b"data", data])
}

/// How many XREADs Redis has been sent (`INFO commandstats`); Redis 7.0 counts
/// a blocking XREAD when it is issued.
pub fn xread_calls(con: &mut redis::Connection) -> u64 {
    let info: String = redis_cmd(con, &["INFO", "commandstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_xread:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("calls"))
}

/// `PUBLISH channel body`; returns how many Redis subscribers got it.
pub fn publish(con: &mut redis::Connection, channel: &str, body: &[u8]) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(body)
        .query(con)
        .unwrap_or_else(|e| panic!("PUBLISH {channel}: {e}"))
}

/// The ids of `XRANGE key start end` (optionally `COUNT n`).
pub fn xrange_ids(con: &mut redis::Connection, key: &str, start: &str, end: &str, count: Option<usize>) -> Vec<String> {
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(key).arg(start).arg(end);
    if let Some(n) = count {
        cmd.arg("COUNT").arg(n);
    }
    let entries: Vec<(String, Vec<Vec<u8>>)> = cmd.query(con).unwrap_or_else(|e| panic!("XRANGE {key}: {e}"));
    entries.into_iter().map(|(id, _)| id).collect()
}

// ---------------------------------------------------------------------------
// Sequenced stream entries: the payload is {"seq":N}
// ---------------------------------------------------------------------------

/// The payload of sequenced entry `seq`.
pub fn seq_data(seq: u64) -> String {
    format!(r#"{{"seq":{seq}}}"#)
}

/// A sequenced entry: its sequence number and its stream id.
pub type SeqEntry = (u64, String);

/// XADDs the sequenced entries `seqs` to `key`, one after the other.
pub fn xadd_seqs(con: &mut redis::Connection, key: &str, seqs: RangeInclusive<u64>) -> Vec<SeqEntry> {
    seqs.map(|seq| (seq, xadd_data(con, key, seq_data(seq).as_bytes())))
        .collect()
}

/// XADDs `n` sequenced entries (seq 1..=n, each padded to about `pad` bytes)
/// in one pipeline; returns their ids.
pub fn xadd_padded(con: &mut redis::Connection, key: &str, n: u64, pad: usize) -> Vec<String> {
    let pad = "x".repeat(pad);
    let mut pipe = redis::pipe();
    for seq in 1..=n {
        pipe.cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("data")
            .arg(format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#));
    }
    pipe.query(con).expect("XADD pipeline")
}

/// A Redis whose ACL user `user` (password `pw`) may subscribe to pub/sub
/// channels `ps.ok*` only, and a feedgate logged in as that user.
pub fn start_with_acl_user(user: &str) -> (Redis, Feedgate) {
    let redis = Redis::start();
    let _: () = redis_cmd(
        &mut redis.conn(),
        &[
            "ACL",
            "SETUSER",
            user,
            "on",
            ">pw",
            "~*",
            "resetchannels",
            "&ps.ok*",
            "+@all",
        ],
    );
    let url = format!("redis://{user}:pw@127.0.0.1:{}", redis.port());
    let fg = Feedgate::builder(&redis).redis_url(url).start();
    (redis, fg)
}

/// A thread that keeps XADDing sequenced entries while a test does something
/// else, with a short pause between entries so the writes span the test's work.
pub struct Producer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<SeqEntry>>>,
}

impl Producer {
    pub fn start(redis: &Redis, key: &str, seqs: RangeInclusive<u64>) -> Self {
        let mut con = redis.conn();
        let key = key.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut written = Vec::new();
            for seq in seqs {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                written.push((seq, xadd_data(&mut con, &key, seq_data(seq).as_bytes())));
                thread::sleep(Duration::from_micros(300));
            }
            written
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Waits until every entry is written; returns them in order.
    pub fn join(mut self) -> Vec<SeqEntry> {
        self.handle
            .take()
            .expect("joined once")
            .join()
            .expect("producer thread panicked")
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Asserts that `received` holds exactly the entries `expected` (same seqs, same ids).
pub fn assert_same_entries(received: &[SeqEntry], expected: &[SeqEntry]) {
    let want: HashMap<u64, &str> = expected.iter().map(|(s, id)| (*s, id.as_str())).collect();
    for (seq, id) in received {
        match want.get(seq) {
            Some(w) => assert_eq!(id, w, "entry seq {seq} came with id {id}, Redis gave it {w}"),
            None => panic!("received seq {seq} (id {id}) that the producer never wrote"),
        }
    }
}

// ---------------------------------------------------------------------------
// Deliveries
// ---------------------------------------------------------------------------

/// The exact bytes of a stream delivery whose payload serializes as `data`.
pub fn stream_frame(ch: &str, id: &str, data: &str) -> String {
    format!(r#"{{"ch":"{ch}","id":"{id}","data":{data}}}"#)
}

/// The exact bytes of a pub/sub delivery whose payload serializes as `data`.
pub fn pubsub_frame(ch: &str, data: &str) -> String {
    format!(r#"{{"ch":"{ch}","data":{data}}}"#)
}

/// A text frame read as a delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub ch: String,
    pub id: Option<String>,
    pub data: Value,
    pub raw: String,
}

/// Parses `raw` as a delivery; panics when it is anything else (a reply, an error).
pub fn parse_delivery(raw: &str) -> Delivery {
    let v: Value = serde_json::from_str(raw).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {raw}"));
    let ch = v.get("ch").and_then(Value::as_str);
    let Some(ch) = ch else {
        panic!("expected a delivery, got: {raw}")
    };
    Delivery {
        ch: ch.to_owned(),
        id: v.get("id").map(|id| {
            id.as_str()
                .unwrap_or_else(|| panic!("id is not a string: {raw}"))
                .to_owned()
        }),
        data: v
            .get("data")
            .cloned()
            .unwrap_or_else(|| panic!("delivery without data: {raw}")),
        raw: raw.to_owned(),
    }
}

/// A stream id `ms-seq` as a pair, for ordering.
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id
        .split_once('-')
        .unwrap_or_else(|| panic!("not a full stream id: {id}"));
    (ms.parse().expect("id ms"), seq.parse().expect("id seq"))
}

/// Reads the sequenced deliveries `seqs` of stream channel `ch`, in order, each
/// exactly once: fails on a gap, a duplicate, a frame out of order or a frame
/// whose bytes differ from the documented layout. Returns `(seq, id)` pairs.
pub fn recv_seqs(client: &mut Client, ch: &str, seqs: RangeInclusive<u64>) -> Vec<SeqEntry> {
    let mut got: Vec<SeqEntry> = Vec::new();
    for want in seqs {
        let raw = client.recv_text();
        let d = parse_delivery(&raw);
        assert_eq!(d.ch, ch, "delivery on an unexpected channel: {raw}");
        let id =
            d.id.clone()
                .unwrap_or_else(|| panic!("stream delivery without id: {raw}"));
        let seq = d
            .data
            .get("seq")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no seq in {raw}"));
        let last = got.last().map(|(s, _)| *s);
        assert!(
            seq == want,
            "expected seq {want} on {ch}, got {seq} ({}); previous seq {last:?}; frame: {raw}",
            if seq > want {
                "gap: entries skipped"
            } else {
                "duplicate or out of order"
            }
        );
        assert_eq!(
            raw,
            stream_frame(ch, &id, &seq_data(seq)),
            "delivery bytes differ from the documented layout"
        );
        if let Some((_, prev)) = got.last() {
            assert!(parse_id(&id) > parse_id(prev), "ids not increasing: {prev} then {id}");
        }
        got.push((seq, id));
    }
    got
}

// ---------------------------------------------------------------------------
// feedgate
// ---------------------------------------------------------------------------

/// How to start one feedgate: flags, env, config file.
pub struct FeedgateBuilder {
    redis_url: String,
    flags: Vec<(String, String)>,
    envs: Vec<(String, String)>,
    config: String,
    port: Option<u16>,
    cores: usize,
}

/// A feedgate process that exited by itself.
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

impl FeedgateBuilder {
    /// Adds `--name value` to the command line (`name` without the dashes).
    pub fn flag(mut self, name: &str, value: impl ToString) -> Self {
        self.flags.push((name.to_owned(), value.to_string()));
        self
    }

    /// Sets an environment variable for the process.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.envs.push((name.to_owned(), value.to_string()));
        self
    }

    /// Replaces the config file's text (default [`PUBSUB_CONFIG`]).
    pub fn config(mut self, text: &str) -> Self {
        self.config = text.to_owned();
        self
    }

    /// Connects to Redis with this URL instead of the test Redis' plain one
    /// (e.g. to log in as an ACL user: `redis://user:pass@127.0.0.1:port`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = url.into();
        self
    }

    /// Listens on this port instead of a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Runs `n` cores instead of 2 (`--cores`; clap refuses it twice, so not
    /// through [`FeedgateBuilder::flag`]). One core puts every client on the
    /// same hub, reader and Redis links.
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = n;
        self
    }

    fn spawn(&self, port: u16, dir: &TempDir) -> Child {
        let config = dir.path().join("feedgate.toml");
        std::fs::write(&config, &self.config).expect("write config file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_feedgate"));
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--redis")
            .arg(&self.redis_url)
            .arg("--cores")
            .arg(self.cores.to_string())
            .arg("--config")
            .arg(&config);
        for (name, value) in &self.flags {
            cmd.arg(format!("--{name}")).arg(value);
        }
        // Only what the test sets: no FEEDGATE_* leaking in from the caller.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FEEDGATE_") {
                cmd.env_remove(name);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(dir.log_file("stdout.log"))
            .stderr(dir.log_file("stderr.log"));
        cmd.spawn().expect("spawn feedgate")
    }

    /// Starts feedgate and waits until `/readyz` answers 200.
    pub fn start(self) -> Feedgate {
        let attempts = if self.port.is_some() { 1 } else { 3 };
        let mut last_stderr = String::new();
        for _ in 0..attempts {
            let mut fg = self.launch();
            match fg.wait_started() {
                Ok(()) => return fg,
                Err(stderr) if stderr.to_lowercase().contains("in use") => last_stderr = stderr,
                Err(stderr) => panic!("feedgate exited during startup; stderr:\n{stderr}"),
            }
        }
        panic!("feedgate could not get a free port; stderr:\n{last_stderr}");
    }

    /// Spawns feedgate on its port (or a free one) with a fresh log folder.
    fn launch(&self) -> Feedgate {
        let dir = TempDir::new("feedgate");
        let port = self.port.unwrap_or_else(free_port);
        let child = self.spawn(port, &dir);
        Feedgate {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        }
    }

    /// Runs feedgate expecting it to exit by itself (bad configuration).
    pub fn run_to_exit(self) -> Exited {
        let dir = TempDir::new("feedgate-exit");
        let port = self.port.unwrap_or_else(free_port);
        let mut child = self.spawn(port, &dir);
        let status = wait_child(&mut child, STARTUP_TIMEOUT);
        let stderr = read_file(&dir.path().join("stderr.log"));
        let Some(status) = status else {
            kill_child(&mut child);
            panic!("feedgate kept running when it should have refused to start; stderr:\n{stderr}");
        };
        Exited { status, stderr }
    }
}

/// A running feedgate, killed on drop (its logs printed if the test failed).
pub struct Feedgate {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
}

impl Feedgate {
    /// feedgate on `redis` with the test configuration and default limits.
    pub fn start(redis: &Redis) -> Self {
        Self::builder(redis).start()
    }

    pub fn builder(redis: &Redis) -> FeedgateBuilder {
        FeedgateBuilder {
            redis_url: redis.url(),
            flags: Vec::new(),
            envs: Vec::new(),
            config: PUBSUB_CONFIG.to_owned(),
            port: None,
            cores: 2,
        }
    }

    /// Waits for `/readyz` 200; `Err(stderr)` when the process exited first.
    fn wait_started(&mut self) -> Result<(), String> {
        let addr = self.addr;
        let child = self.child.as_mut().expect("running");
        let what = format!("feedgate at {addr} to answer /readyz with 200");
        let outcome = wait_ready_or_exit(
            child,
            &what,
            || matches!(http_get(addr, "/readyz"), Ok(r) if r.status == 200),
        );
        outcome.map_err(|_| {
            self.child = None;
            self.stderr()
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("feedgate is running").id()
    }

    /// A WebSocket client connected to `/ws`.
    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// `GET path`; panics when there is no parsable answer.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Polls `/readyz` until it answers `status`.
    pub fn wait_readyz(&self, status: u16) {
        wait_until(
            &format!("/readyz to answer {status}"),
            STARTUP_TIMEOUT,
            || matches!(http_get(self.addr, "/readyz"), Ok(r) if r.status == status),
        );
    }

    pub fn stderr(&self) -> String {
        read_file(&self.dir.path().join("stderr.log"))
    }

    pub fn stdout(&self) -> String {
        read_file(&self.dir.path().join("stdout.log"))
    }

    /// Sends a signal (`TERM`, `INT`, ...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Waits at most `timeout` for the process to exit by itself; `None` when
    /// it is still running then (it is killed when the guard drops).
    pub fn wait_exit_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("feedgate is running");
        let status = wait_child(child, timeout)?;
        self.child = None;
        Some(status)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("feedgate is running");
        let status = wait_child(child, STARTUP_TIMEOUT);
        let Some(status) = status else {
            panic!("feedgate did not exit; stderr:\n{}", self.stderr())
        };
        self.child = None;
        status
    }
}

impl Drop for Feedgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_child(&mut child);
        }
        if thread::panicking() {
            eprintln!(
                "----- feedgate {} stderr -----\n{}\n----- stdout -----\n{}\n-----",
                self.addr,
                self.stderr(),
                self.stdout()
            );
        }
    }
}

/// A server and its Redis, for tests that need nothing special.
pub fn start_default() -> (Redis, Feedgate) {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    (redis, fg)
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// Sends `raw` on a new connection and reads one response (by Content-Length,
/// else to EOF).
pub fn http_request(addr: SocketAddr, raw: &[u8]) -> Result<HttpResponse, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(raw).map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(resp) = parse_http_response(&buf) {
            return Ok(resp);
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break,
        }
    }
    let end = find(&buf, b"\r\n\r\n")
        .ok_or_else(|| format!("no complete HTTP head in {:?}", String::from_utf8_lossy(&buf)))?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    Ok(HttpResponse {
        status: status_of(&head)?,
        head,
        body: buf[end + 4..].to_vec(),
    })
}

/// A complete response when the head and a Content-Length body are in `buf`.
fn parse_http_response(buf: &[u8]) -> Option<HttpResponse> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    let body = buf.get(end + 4..end + 4 + len)?.to_vec();
    Some(HttpResponse {
        status: status_of(&head).ok()?,
        head,
        body,
    })
}

fn status_of(head: &str) -> Result<u16, String> {
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split_whitespace();
    match (words.next(), words.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!("not an HTTP status line: {line:?}")),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn http_get(addr: SocketAddr, path: &str) -> Result<HttpResponse, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    http_request(addr, req.as_bytes())
}

// ---------------------------------------------------------------------------
// WebSocket client (tungstenite, blocking, every read bounded)
// ---------------------------------------------------------------------------

/// A protocol client over tungstenite. Every method panics with context when the
/// server does something else than the test expects.
pub struct Client {
    ws: WebSocket<TcpStream>,
    next_req: u64,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(READ_TIMEOUT)).expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {addr}/ws: {e}"));
        Self { ws, next_req: 1000 }
    }

    /// Changes how long one read may wait (default [`READ_TIMEOUT`]).
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.ws
            .get_mut()
            .set_read_timeout(Some(timeout))
            .expect("set read timeout");
    }

    /// TCP segments this client's socket has received (`TCP_INFO`'s
    /// `tcpi_segs_in`): on loopback, one per server write that fits a segment.
    pub fn segments_in(&self) -> u32 {
        use std::os::fd::AsRawFd;
        // SAFETY: all-zero is a valid tcp_info (plain integers).
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let fd = self.ws.get_ref().as_raw_fd();
        // SAFETY: getsockopt writes at most `len` bytes into `info`.
        let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, (&raw mut info).cast(), &mut len) };
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_segs_in
    }

    /// A fresh `req` number.
    pub fn next_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned()))
            .unwrap_or_else(|e| panic!("send {text:.200}: {e}"));
    }

    pub fn send(&mut self, op: &Value) {
        self.send_text(&op.to_string());
    }

    pub fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes))
            .unwrap_or_else(|e| panic!("send binary: {e}"));
    }

    /// The next message of any kind (tungstenite answers pings by itself).
    pub fn read_message(&mut self) -> Message {
        match self.ws.read() {
            Ok(m) => m,
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no frame from the server within {READ_TIMEOUT:?}")
            }
            Err(e) => panic!("reading from the server failed: {e}"),
        }
    }

    /// The next message, or `None` when none arrives within the read timeout.
    pub fn try_read_message(&mut self) -> Option<Message> {
        match self.ws.read() {
            Ok(m) => Some(m),
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("reading from the server failed: {e}"),
        }
    }

    /// The next text frame, as it came; panics on a close or a binary frame.
    pub fn recv_text(&mut self) -> String {
        loop {
            match self.read_message() {
                Message::Text(t) => return t,
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(f) => panic!("expected a text frame, the server closed: {f:?}"),
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub fn recv_json(&mut self) -> Value {
        let text = self.recv_text();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}"))
    }

    /// Sends `op` and returns the next frame, which must be its reply.
    pub fn request(&mut self, op: Value) -> Value {
        self.send(&op);
        self.recv_json()
    }

    /// Subscribes to `channel` with `extra` fields (`since`, `last`) and a fresh
    /// `req`; asserts the reply is `subscribed` for it and returns the reply.
    pub fn subscribe(&mut self, channel: &str, extra: Value) -> Value {
        let req = self.next_req();
        let mut op = json!({"op": "subscribe", "channel": channel, "req": req});
        for (k, v) in extra.as_object().expect("extra fields are an object") {
            op[k] = v.clone();
        }
        let reply = self.request(op);
        assert_eq!(reply["type"], "subscribed", "subscribe {channel} {extra}: {reply}");
        assert_eq!(reply["channel"], channel, "{reply}");
        assert_eq!(reply["req"], req, "{reply}");
        reply
    }

    /// Subscribes live (no `since`, no `last`).
    pub fn sub(&mut self, channel: &str) -> Value {
        self.subscribe(channel, json!({}))
    }

    pub fn unsubscribe(&mut self, channel: &str) {
        let req = self.next_req();
        let reply = self.request(json!({"op": "unsubscribe", "channel": channel, "req": req}));
        assert_eq!(reply, json!({"type": "unsubscribed", "channel": channel, "req": req}));
    }

    /// Sends `text`, expects an error with `code` echoing `req` as given (`None`:
    /// no `req` key), and checks that the connection still works.
    pub fn expect_error(&mut self, text: &str, code: &str, req: Option<u64>) -> Value {
        self.send_text(text);
        let reply = self.recv_json();
        check_error(&reply, code, req).unwrap_or_else(|e| panic!("sent {text}: {e}"));
        self.assert_alive();
        reply
    }

    /// A `ping` op gets its `pong`: the connection is open and serving.
    pub fn assert_alive(&mut self) {
        let req = self.next_req();
        let reply = self.request(json!({"op": "ping", "req": req}));
        assert_eq!(
            reply,
            json!({"type": "pong", "req": req}),
            "connection no longer answers ping"
        );
    }

    /// The next `n` text frames.
    pub fn recv_texts(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.recv_text()).collect()
    }

    /// Reads until the server's close frame; skips pings. Returns the text frames
    /// read on the way and the close code and reason. Panics when the connection
    /// ends without a close frame.
    pub fn read_until_close(&mut self) -> (Vec<String>, u16, String) {
        let mut texts = Vec::new();
        loop {
            match self.read_message() {
                Message::Text(t) => texts.push(t),
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(Some(f)) => return (texts, u16::from(f.code), f.reason.into_owned()),
                Message::Close(None) => panic!("close frame without a code after {} text frames", texts.len()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Expects the server's next frame to be a close with `code` (pings aside),
    /// then the TCP connection to end. Returns the close reason.
    pub fn expect_close(&mut self, code: u16) -> String {
        let (texts, got, reason) = self.read_until_close();
        assert!(
            texts.is_empty(),
            "expected close {code}, got text frames first: {texts:?}"
        );
        assert_eq!(got, code, "close code (reason {reason:?})");
        self.assert_tcp_closed();
        reason
    }

    /// After the close handshake the server ends the TCP connection.
    pub fn assert_tcp_closed(&mut self) {
        loop {
            match self.ws.read() {
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("server kept the TCP connection open after closing the WebSocket")
                }
                Err(_) => return, // reset or EOF: closed
            }
        }
    }
}

/// Checks that `reply` is an error with `code`, a string message, and `req`
/// echoed as given (`None`: no `req` key).
pub fn check_error(reply: &Value, code: &str, req: Option<u64>) -> Result<(), String> {
    if reply["type"] != "error" || reply["code"] != code {
        return Err(format!("expected error {code}, got {reply}"));
    }
    if !reply["message"].is_string() {
        return Err(format!("error without a string message: {reply}"));
    }
    match req {
        Some(n) if reply.get("req") != Some(&json!(n)) => Err(format!("expected req {n} echoed: {reply}")),
        None if reply.get("req").is_some() => Err(format!("expected no req key: {reply}")),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// A raw WebSocket client over TCP: says nothing after the handshake
// ---------------------------------------------------------------------------

/// A client that does the upgrade by hand and then only reads: it never answers
/// a ping, to see what the server does with a silent peer.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame from the server.
#[derive(Debug)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawWs {
    /// Sends an upgrade request for `path`; returns the response head and, when
    /// the status is 101, the connection.
    pub fn handshake(addr: SocketAddr, path: &str) -> (String, Option<Self>) {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::handshake_on(stream, addr, path)
    }

    /// [`RawWs::handshake`] on a socket the caller connected to `addr`.
    fn handshake_on(mut stream: TcpStream, addr: SocketAddr, path: &str) -> (String, Option<Self>) {
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(READ_TIMEOUT)).expect("write timeout");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).expect("send upgrade");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            let n = stream
                .read(&mut chunk)
                .unwrap_or_else(|e| panic!("read upgrade response: {e}"));
            assert!(
                n > 0,
                "connection closed during the upgrade: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let upgraded = status_of(&head).ok() == Some(101);
        let rest = buf[end + 4..].to_vec();
        (head, upgraded.then_some(Self { stream, buf: rest }))
    }

    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::upgrade(stream, addr)
    }

    /// Like [`RawWs::connect`], with the socket's receive buffer fixed at about
    /// `bytes` (set before connecting, so the kernel does not grow it): what the
    /// server can push into a client that does not read is then bounded.
    pub fn connect_with_recv_buffer(addr: SocketAddr, bytes: usize) -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        socket.set_nodelay(true).expect("nodelay");
        Self::upgrade(socket.into(), addr)
    }

    fn upgrade(stream: TcpStream, addr: SocketAddr) -> Self {
        let (head, ws) = Self::handshake_on(stream, addr, "/ws");
        let ws = ws.unwrap_or_else(|| panic!("upgrade refused: {head}"));
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong Sec-WebSocket-Accept in: {head}"
        );
        ws
    }

    /// This client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    /// Writes `bytes` as they are; the error when the socket refuses them.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends one final frame with `opcode` and `payload`, masked with a fixed key
    /// as RFC 6455 requires of clients, or unmasked (`masked` false) to break
    /// that rule on purpose.
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8], masked: bool) -> std::io::Result<()> {
        self.send_raw(&client_frame(opcode, payload, masked))
    }

    /// Reads frames until the server ends the connection; fails when the server
    /// keeps it open past the read timeout.
    pub fn read_frames_until_eof(&mut self) -> Vec<RawFrame> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!(
                        "the server kept a silent connection open; frames so far: {:?}",
                        self.frames()
                    )
                }
                Err(_) => break, // reset: closed
            }
        }
        self.frames()
    }

    fn frames(&self) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        let mut b = &self.buf[..];
        while b.len() >= 2 {
            assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
            let (len, hdr) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b.len() < hdr + len {
                break;
            }
            frames.push(RawFrame {
                opcode: b[0] & 0x0f,
                payload: b[hdr..hdr + len].to_vec(),
            });
            b = &b[hdr + len..];
        }
        frames
    }
}

/// The bytes of one final client frame (FIN set); masked with a fixed key
/// unless `masked` is false.
pub fn client_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![0x80 | (opcode & 0x0f)];
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&KEY);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The TCP state (as in `/proc/net/tcp`: 0x01 established, 0x08 close-wait,
/// ...) of the server's end of the IPv4 loopback connection between `server`
/// and `client`, and its send-queue bytes; `None` when the kernel holds no
/// such socket any more.
pub fn server_side_tcp(server: SocketAddr, client: SocketAddr) -> Option<(u8, u64)> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port()),
        SocketAddr::V6(_) => panic!("IPv4 only: {a}"),
    };
    let (local, remote) = (hex(server), hex(client));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[1] != local || fields[2] != remote {
            return None;
        }
        let state = u8::from_str_radix(fields[3], 16).ok()?;
        let tx_queue = u64::from_str_radix(fields[4].split(':').next()?, 16).ok()?;
        Some((state, tx_queue))
    })
}

/// The close code of a close frame's payload (`None` when it carries none).
pub fn close_code_of(frame: &RawFrame) -> Option<u16> {
    (frame.opcode == 0x8 && frame.payload.len() >= 2).then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]))
}

// ---------------------------------------------------------------------------
// Helpers shared by several test files
// ---------------------------------------------------------------------------

/// Whether `ch` is a pub/sub channel under [`PUBSUB_CONFIG`].
pub fn is_pubsub(ch: &str) -> bool {
    ch.starts_with("ps.")
}

/// Writes the JSON text `data` to channel `ch` as a producer would (PUBLISH for
/// a pub/sub channel, `XADD ch * data <data>` for a stream) and returns the
/// exact bytes of the delivery a subscriber must get.
pub fn produce(con: &mut redis::Connection, ch: &str, data: &str) -> String {
    if is_pubsub(ch) {
        publish(con, ch, data.as_bytes());
        pubsub_frame(ch, data)
    } else {
        let id = xadd_data(con, ch, data.as_bytes());
        stream_frame(ch, &id, data)
    }
}

/// Produces one message on `ch` and expects `client` (subscribed to it, with
/// nothing else pending) to receive exactly it.
pub fn assert_delivers(con: &mut redis::Connection, client: &mut Client, ch: &str) {
    let expected = produce(con, ch, r#"{"probe":true}"#);
    assert_eq!(client.recv_text(), expected, "delivery on {ch}");
}

/// Sends each `(text, code, req)` and checks the error reply (see
/// [`check_error`]) and that the connection still answers afterwards. Reports
/// every failing case at once.
pub fn assert_error_cases(client: &mut Client, cases: &[(String, &str, Option<u64>)]) {
    let mut failures = Vec::new();
    for (text, code, req) in cases {
        client.send_text(text);
        let reply = client.recv_json();
        if let Err(e) = check_error(&reply, code, *req) {
            failures.push(format!("sent {text:.120}: {e}"));
        }
        client.assert_alive();
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The seq of the first entry after a subscription's `position` on a stream of
/// sequenced entries (seq 1 is the first entry ever written to `key`).
pub fn seq_after_position(con: &mut redis::Connection, key: &str, reply: &Value) -> u64 {
    let position = reply["position"]
        .as_str()
        .unwrap_or_else(|| panic!("no position in {reply}"));
    parse_id(position);
    xrange_ids(con, key, "-", position, None).len() as u64 + 1
}

/// The `{"op":"subscribe"...}` text for error-case tables.
pub fn sub_op(fields: &str) -> String {
    format!(r#"{{"op":"subscribe",{fields}}}"#)
}

// ---------------------------------------------------------------------------
// Hostile and limit tests: a raw client that may break any rule, and the
// process's health (added for hostile.rs and limits.rs)
// ---------------------------------------------------------------------------

/// FIN bit of a frame's first byte.
pub const WS_FIN: u8 = 0x80;
/// RSV1, RSV2, RSV3 bits of a frame's first byte.
pub const WS_RSV1: u8 = 0x40;
pub const WS_RSV2: u8 = 0x20;
pub const WS_RSV3: u8 = 0x10;
/// Opcodes.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The bytes of one client frame whose first byte is `b0` exactly as given
/// (FIN, RSV bits and opcode, any of them wrong on purpose), the payload
/// length in its shortest form, masked with a fixed key unless `masked` is false.
pub fn frame_with_head(b0: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = client_frame(b0 & 0x0f, payload, masked);
    out[0] = b0;
    out
}

/// Only the header of a masked frame (first byte `b0`) that declares `len`
/// payload bytes in the 64-bit extended length form; no payload follows.
pub fn frame_header_declaring(b0: u8, len: u64) -> Vec<u8> {
    let mut out = vec![b0, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    out
}

/// How reading from a [`WireConn`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEnd {
    /// The server closed its end (EOF).
    Eof,
    /// The connection was reset (or another read error).
    Reset,
    /// Nothing arrived within the timeout; the connection is still open.
    TimedOut,
}

/// The answer to an upgrade request made with [`WireConn::upgrade_from`].
pub struct WireUpgrade {
    pub status: u16,
    pub head: String,
    /// The connection, when the status is 101.
    pub conn: Option<WireConn>,
}

/// A raw WebSocket client over TCP that reads and writes frames as bytes, so a
/// test can send anything and see exactly what the server sends back.
pub struct WireConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl WireConn {
    /// Upgrades on `/ws`; panics unless the server answers 101.
    pub fn connect(addr: SocketAddr) -> Self {
        let up = Self::upgrade_from(addr, None, None).unwrap_or_else(|e| panic!("{e}"));
        up.conn.unwrap_or_else(|| panic!("upgrade refused: {}", up.head))
    }

    /// Connects from `local_ip` (any port; `None`: the OS picks), with the
    /// receive buffer fixed at about `recv_buffer` bytes when given (set before
    /// connecting, so the kernel does not grow it), and sends a valid upgrade
    /// request for `/ws`. `Err` when the connection or the response failed.
    pub fn upgrade_from(
        addr: SocketAddr,
        local_ip: Option<std::net::IpAddr>,
        recv_buffer: Option<usize>,
    ) -> Result<WireUpgrade, String> {
        Self::upgrade_sending(addr, local_ip, recv_buffer, &[])
    }

    /// An upgraded connection from any local address, with `recv_buffer` as
    /// its `SO_RCVBUF` when given; panics when the upgrade fails.
    pub fn upgraded(addr: SocketAddr, recv_buffer: Option<usize>) -> Self {
        Self::upgrade_from(addr, None, recv_buffer)
            .unwrap_or_else(|e| panic!("{e}"))
            .conn
            .expect("upgraded")
    }

    /// Like [`WireConn::upgrade_from`], with `after_head` written in the same
    /// write as the request head, right after it (frames sent before the 101).
    pub fn upgrade_sending(
        addr: SocketAddr,
        local_ip: Option<std::net::IpAddr>,
        recv_buffer: Option<usize>,
        after_head: &[u8],
    ) -> Result<WireUpgrade, String> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = local_ip {
            socket
                .bind(&SocketAddr::new(ip, 0).into())
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        if let Some(bytes) = recv_buffer {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(|e| format!("SO_RCVBUF: {e}"))?;
        }
        socket
            .connect_timeout(&addr.into(), READ_TIMEOUT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut stream: TcpStream = socket.into();
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(after_head);
        stream.write_all(&bytes).map_err(|e| format!("send upgrade: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end;
            }
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed during the upgrade: {:?}",
                        String::from_utf8_lossy(&buf)
                    ))
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read upgrade response: {e}")),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = status_of(&head)?;
        let rest = buf[end + 4..].to_vec();
        let conn = (status == 101).then(|| Self { stream, buf: rest });
        Ok(WireUpgrade { status, head, conn })
    }

    /// This client's end of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    /// Writes `bytes` as they are.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `text` as one final masked text frame; panics when the write fails.
    pub fn send_text(&mut self, text: &str) {
        self.send(&client_frame(OP_TEXT, text.as_bytes(), true))
            .unwrap_or_else(|e| panic!("send {text:.120}: {e}"));
    }

    /// The next whole frame from the server, waiting at most `timeout`;
    /// `Err` says how reading ended without one.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<RawFrame, WireEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WireEnd::TimedOut);
            }
            self.stream.set_read_timeout(Some(left)).expect("read timeout");
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(WireEnd::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(WireEnd::TimedOut)
                }
                Err(_) => return Err(WireEnd::Reset),
            }
        }
    }

    /// The next text frame's payload as JSON, skipping the server's pings;
    /// panics on anything else or when none comes within [`READ_TIMEOUT`].
    pub fn next_json(&mut self) -> Value {
        loop {
            match self.next_frame(READ_TIMEOUT) {
                Ok(f) if f.opcode == OP_PING => continue,
                Ok(f) if f.opcode == OP_TEXT => {
                    return serde_json::from_slice(&f.payload)
                        .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {f:?}"))
                }
                Ok(f) => panic!("expected a text frame, got {f:?}"),
                Err(end) => panic!("expected a text frame, the connection {end:?}"),
            }
        }
    }

    /// Every frame until the server ends the connection (EOF or reset), or
    /// until `timeout` passes (then the end is [`WireEnd::TimedOut`]).
    pub fn frames_until_end(&mut self, timeout: Duration) -> (Vec<RawFrame>, WireEnd) {
        let deadline = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Ok(frame) => frames.push(frame),
                Err(end) => return (frames, end),
            }
        }
    }

    /// Bytes received after the last whole frame (a frame cut short).
    pub fn partial_bytes(&self) -> usize {
        self.buf.len()
    }
}

/// One whole unmasked server frame at the start of `b`, and its length.
fn parse_server_frame(b: &[u8]) -> Option<(RawFrame, usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames must not be masked");
    let (len, hdr) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if b.len() < hdr + len {
        return None;
    }
    let frame = RawFrame {
        opcode: b[0] & 0x0f,
        payload: b[hdr..hdr + len].to_vec(),
    };
    Some((frame, hdr + len))
}

/// The process's resident set (`VmRSS` of `/proc/<pid>/status`) in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS for pid {pid} (process gone?)"))
}

/// The state letter of process `pid` (`/proc/<pid>/stat`: R, S, D, Z ...);
/// `None` when there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Samples the process's RSS every 10 ms until stopped; returns the peak.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<std::sync::atomic::AtomicU64>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(std::sync::atomic::AtomicU64::new(vm_rss_kib(pid)));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = try_rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    pub fn peak_kib(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `VmRSS` in KiB, `None` once the process is gone.
pub fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

// ---------------------------------------------------------------------------
// Redis faults: processes stopped, descriptors counted, sockets inspected
// ---------------------------------------------------------------------------

impl Redis {
    /// The redis-server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the redis-server process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} redis-server failed");
    }

    /// A connection whose reads wait up to `timeout` (a Redis that is stopped
    /// for a while then answers late instead of failing the call).
    pub fn conn_with_timeout(&self, timeout: Duration) -> redis::Connection {
        let con = self.conn();
        con.set_read_timeout(Some(timeout)).expect("set redis read timeout");
        con.set_write_timeout(Some(timeout)).expect("set redis write timeout");
        con
    }
}

impl FeedgateBuilder {
    /// Starts feedgate and waits only until `/healthz` answers: for a Redis
    /// that cannot be reached, where `/readyz` never turns 200.
    pub fn start_unready(self) -> Feedgate {
        let mut fg = self.launch();
        let addr = fg.addr;
        let child = fg.child.as_mut().expect("running");
        let what = format!("feedgate at {addr} to answer /healthz");
        if wait_ready_or_exit(
            child,
            &what,
            || matches!(http_get(addr, "/healthz"), Ok(r) if r.status == 200),
        )
        .is_err()
        {
            fg.child = None;
            panic!("feedgate exited during startup; stderr:\n{}", fg.stderr());
        }
        fg
    }
}

/// How many descriptors process `pid` holds open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"))
        .count()
}

/// Copies of the TCP sockets of process `pid` (a child of this test) whose
/// peer is `peer` port on loopback, taken with pidfd_getfd(2), so their socket
/// options can be read.
pub fn sockets_of_process_to(pid: u32, peer: u16) -> Vec<socket2::Socket> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls on integers; each returned descriptor is new and
    // owned by the Socket built from it.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .flatten()
    {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd as libc::c_int, fd, 0) };
        if copy < 0 {
            panic!("pidfd_getfd({fd}): {}", std::io::Error::last_os_error());
        }
        let socket = unsafe { socket2::Socket::from_raw_fd(copy as libc::c_int) };
        let to_peer = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == peer && a.ip().is_loopback());
        if to_peer {
            found.push(socket);
        }
    }
    unsafe { libc::close(pidfd as libc::c_int) };
    found
}

/// The ids of Redis clients whose last command was `cmd` (CLIENT LIST).
pub fn client_ids_with_cmd(con: &mut redis::Connection, cmd: &str) -> Vec<String> {
    let list: String = redis_cmd(con, &["CLIENT", "LIST"]);
    let want = format!("cmd={cmd}");
    list.lines()
        .filter(|line| line.split_whitespace().any(|f| f == want))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_owned)
        })
        .collect()
}

/// The wire length of a server frame with `payload_len` payload bytes.
pub fn server_frame_len(payload_len: usize) -> usize {
    payload_len
        + match payload_len {
            0..=125 => 2,
            126..=0xffff => 4,
            _ => 10,
        }
}

/// The code and reason of a close frame; panics on any other frame.
pub fn close_of(frame: &RawFrame) -> (u16, String) {
    assert_eq!(frame.opcode, OP_CLOSE, "expected a close frame: {frame:?}");
    let code = close_code_of(frame).unwrap_or_else(|| panic!("close frame without a code: {frame:?}"));
    (code, String::from_utf8_lossy(&frame.payload[2..]).into_owned())
}

/// The text frames among `frames`, as JSON.
pub fn texts_of(frames: &[RawFrame]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f.opcode == OP_TEXT)
        .map(|f| serde_json::from_slice(&f.payload).unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {f:?}")))
        .collect()
}
