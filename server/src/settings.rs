//! Settings: command-line flags, `FEEDGATE_*` environment variables and the TOML
//! file, merged (flags win over env, env over file) and checked once at start.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;
use feedgate_core::channel::{Namespace, Namespaces, SlowConsumer, Source};
use feedgate_core::config::{check_write_delay, BadValue, FileConfig, Limits, RedisUrl};

/// Command-line flags; each also reads `FEEDGATE_<NAME>` from the environment.
#[derive(Debug, Parser)]
#[command(
    name = "feedgate",
    version,
    about = "Streams Redis Streams and pub/sub to WebSocket clients, one pinned thread per core."
)]
pub struct Cli {
    /// TOML configuration file (every key documented in docs/configuration.md).
    #[arg(long, env = "FEEDGATE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on for HTTP and WebSocket [default: 0.0.0.0:8080].
    #[arg(long, env = "FEEDGATE_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Redis to read from: redis://[user:pass@]host:port[/db] [default: redis://127.0.0.1:6379].
    #[arg(long, env = "FEEDGATE_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// Cores to run on, one pinned thread each [default: all available CPUs].
    #[arg(long, env = "FEEDGATE_CORES", value_name = "N")]
    pub cores: Option<usize>,
    /// Prefix added to channel names to form Redis keys and pub/sub channels [default: ""].
    #[arg(long, env = "FEEDGATE_KEY_PREFIX", value_name = "PREFIX")]
    pub key_prefix: Option<String>,
    /// Log filter, as in RUST_LOG (e.g. info, debug, feedgate=debug) [default: info].
    #[arg(long, env = "FEEDGATE_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Largest client message in bytes; larger ones close the connection with 1009 [default: 65536].
    #[arg(long, env = "FEEDGATE_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Subscriptions one connection may hold [default: 1024].
    #[arg(long, env = "FEEDGATE_MAX_SUBSCRIPTIONS", value_name = "N")]
    pub max_subscriptions: Option<usize>,
    /// Bytes queued for one client before it is closed with 4008 [default: 8388608].
    #[arg(long, env = "FEEDGATE_OUTBOUND_QUEUE_BYTES", value_name = "BYTES")]
    pub outbound_queue_bytes: Option<usize>,
    /// How often each connection is pinged, in milliseconds [default: 20000].
    #[arg(long, env = "FEEDGATE_PING_INTERVAL_MS", value_name = "MS")]
    pub ping_interval_ms: Option<u64>,
    /// Silence allowed after a ping before the connection is closed, in milliseconds [default: 20000].
    #[arg(long, env = "FEEDGATE_PONG_TIMEOUT_MS", value_name = "MS")]
    pub pong_timeout_ms: Option<u64>,
    /// Largest `last` a subscribe may ask for [default: 10000].
    #[arg(long, env = "FEEDGATE_MAX_LAST", value_name = "N")]
    pub max_last: Option<u64>,
    /// Entries fetched per XRANGE page during a replay [default: 1000].
    #[arg(long, env = "FEEDGATE_REPLAY_PAGE", value_name = "N")]
    pub replay_page: Option<u64>,
    /// WebSocket connections the process holds at once; past it an upgrade is
    /// closed with 1013 [default: 100000].
    #[arg(long, env = "FEEDGATE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections one source IP may hold at once; 0 means no limit [default: 0].
    #[arg(long, env = "FEEDGATE_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// Ops per second one connection may send; past it ops are answered
    /// `rate_limited`, and a client that keeps on is closed with 1008 [default: 100].
    #[arg(long, env = "FEEDGATE_MAX_OPS_PER_SEC", value_name = "N")]
    pub max_ops_per_sec: Option<u32>,
    /// Ops one connection may send in a burst before the rate applies [default: 1024].
    #[arg(long, env = "FEEDGATE_OP_BURST", value_name = "N")]
    pub op_burst: Option<u32>,
    /// Replays (`since`, `last`) one core runs at once; more wait their turn [default: 64].
    #[arg(long, env = "FEEDGATE_MAX_REPLAYS_PER_CORE", value_name = "N")]
    pub max_replays_per_core: Option<usize>,
    /// Microseconds a connection's writer waits after the first queued delivery
    /// for more, then sends them in one write; 0 writes at once [default: 0].
    #[arg(long, env = "FEEDGATE_WRITE_DELAY_US", value_name = "US")]
    pub write_delay_us: Option<u64>,
    /// Most frames one write carries, 1 to 1024; a batch that reaches it goes
    /// out without waiting out the write delay [default: 1024].
    #[arg(long, env = "FEEDGATE_MAX_FRAMES_PER_WRITE", value_name = "N")]
    pub max_frames_per_write: Option<usize>,
    /// Cores never sleep in the kernel while idle: each spins, polling for I/O,
    /// at 100 % CPU (for cores dedicated to feedgate) [default: off].
    #[arg(long, env = "FEEDGATE_BUSY_POLL", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub busy_poll: Option<bool>,
    /// A namespace as PREFIX=SOURCE[:SLOW_CONSUMER[:KEY]] (source: stream or
    /// pubsub; slow consumer: disconnect, drop_oldest or conflate; key: the
    /// payload field naming the instrument); repeatable, or comma-separated in
    /// FEEDGATE_NAMESPACES. Replaces the file's namespaces.
    #[arg(
        long = "namespace",
        env = "FEEDGATE_NAMESPACES",
        value_name = "PREFIX=SOURCE[:SLOW_CONSUMER[:KEY]]",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
}

/// Every environment variable the server reads.
const KNOWN_ENV: &[&str] = &[
    "FEEDGATE_DEBUG_PANIC_CORE",
    "FEEDGATE_CONFIG",
    "FEEDGATE_LISTEN",
    "FEEDGATE_REDIS",
    "FEEDGATE_CORES",
    "FEEDGATE_KEY_PREFIX",
    "FEEDGATE_LOG",
    "FEEDGATE_MAX_MESSAGE_BYTES",
    "FEEDGATE_MAX_SUBSCRIPTIONS",
    "FEEDGATE_OUTBOUND_QUEUE_BYTES",
    "FEEDGATE_PING_INTERVAL_MS",
    "FEEDGATE_PONG_TIMEOUT_MS",
    "FEEDGATE_MAX_LAST",
    "FEEDGATE_REPLAY_PAGE",
    "FEEDGATE_MAX_CONNECTIONS",
    "FEEDGATE_MAX_CONNECTIONS_PER_IP",
    "FEEDGATE_MAX_OPS_PER_SEC",
    "FEEDGATE_OP_BURST",
    "FEEDGATE_MAX_REPLAYS_PER_CORE",
    "FEEDGATE_WRITE_DELAY_US",
    "FEEDGATE_MAX_FRAMES_PER_WRITE",
    "FEEDGATE_BUSY_POLL",
    "FEEDGATE_NAMESPACES",
];

/// The resolved settings every core shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub redis: RedisUrl,
    /// Redis's address, resolved once (monoio's connect resolves names
    /// synchronously, shared/TRAPS.md).
    pub redis_addr: SocketAddr,
    pub cores: usize,
    pub key_prefix: String,
    pub log: String,
    pub limits: Limits,
    pub namespaces: Namespaces,
    /// Cores spin instead of parking while idle.
    pub busy_poll: bool,
}

/// A setting that cannot be used; the message names its key.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Bad(#[from] BadValue),
}

fn bad(key: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Bad(BadValue {
        key,
        reason: reason.into(),
    })
}

/// `FEEDGATE_*` variables that no setting reads (typos, most likely).
pub fn unknown_env_vars() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("FEEDGATE_") && !KNOWN_ENV.contains(&k.as_str()))
        .collect()
}

impl Settings {
    /// Merges flags (which clap already merged with the environment) over the file.
    pub fn resolve(cli: Cli) -> Result<Self, SettingsError> {
        let file = match &cli.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| SettingsError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
        };
        let listen_text = cli.listen.or(file.listen).unwrap_or_else(|| "0.0.0.0:8080".into());
        let listen = resolve_addr(&listen_text).map_err(|e| bad("listen", e))?;
        let redis_text = cli
            .redis
            .or(file.redis)
            .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        let redis: RedisUrl = redis_text.parse().map_err(|e: String| bad("redis", e))?;
        let redis_addr =
            resolve_addr(&format!("{}:{}", bracket(&redis.host), redis.port)).map_err(|e| bad("redis", e))?;
        let available = core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1));
        let cores = cli.cores.or(file.cores).unwrap_or(available);
        if cores == 0 {
            return Err(bad("cores", "must be at least 1"));
        }
        let f = file.limits;
        let d = Limits::default();
        // Flags (and env, which clap merged into them) win over the file.
        macro_rules! pick {
            ($($name:ident),* $(,)?) => {
                Limits { $($name: cli.$name.or(f.$name).unwrap_or(d.$name)),* }
            };
        }
        let limits = pick!(
            max_message_bytes,
            max_subscriptions,
            outbound_queue_bytes,
            ping_interval_ms,
            pong_timeout_ms,
            max_last,
            replay_page,
            max_connections,
            max_connections_per_ip,
            max_ops_per_sec,
            op_burst,
            max_replays_per_core,
            write_delay_us,
            max_frames_per_write,
        );
        limits.validate()?;
        let namespaces = if cli.namespaces.is_empty() {
            file.namespaces
        } else {
            cli.namespaces
                .iter()
                .map(|s| parse_namespace(s))
                .collect::<Result<_, _>>()?
        };
        for namespace in &namespaces {
            if let Some(delay) = namespace.write_delay_us {
                check_write_delay("namespaces.write_delay_us", delay)?;
            }
        }
        Ok(Self {
            listen,
            redis,
            redis_addr,
            cores,
            key_prefix: cli.key_prefix.or(file.key_prefix).unwrap_or_default(),
            log: cli.log.or(file.log).unwrap_or_else(|| "info".into()),
            limits,
            namespaces: Namespaces::new(namespaces),
            busy_poll: cli.busy_poll.or(file.busy_poll).unwrap_or(false),
        })
    }

    /// The Redis key (or pub/sub channel) of `channel`.
    pub fn key_of(&self, channel: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.key_prefix.len() + channel.len());
        key.extend_from_slice(self.key_prefix.as_bytes());
        key.extend_from_slice(channel.as_bytes());
        key
    }

    /// The channel of a Redis key, when it carries the key prefix.
    pub fn channel_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        key.strip_prefix(self.key_prefix.as_bytes())
            .and_then(|rest| std::str::from_utf8(rest).ok())
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("`{text}` is not an address: {e}"))?
        .next()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

fn parse_namespace(text: &str) -> Result<Namespace, SettingsError> {
    let (prefix, rest) = text.split_once('=').ok_or_else(|| {
        bad(
            "namespaces",
            format!("`{text}` is not PREFIX=SOURCE[:SLOW_CONSUMER[:KEY]]"),
        )
    })?;
    let mut parts = rest.splitn(3, ':');
    let source: Source = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| bad("namespaces", e))?;
    let slow_consumer: SlowConsumer = match parts.next() {
        Some(policy) => policy.parse().map_err(|e: String| bad("namespaces", e))?,
        None => SlowConsumer::default(),
    };
    let key = match parts.next() {
        Some("") => return Err(bad("namespaces", format!("`{text}` names an empty key"))),
        Some(key) => Some(key.to_owned()),
        None => None,
    };
    Ok(Namespace {
        prefix: prefix.to_owned(),
        source,
        slow_consumer,
        key,
        write_delay_us: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("feedgate").chain(args.iter().copied()))
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("fg-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\ncores = 3\n[limits]\nmax_last = 5\n").unwrap();
        let s = Settings::resolve(cli(&["--config", path.to_str().unwrap(), "--listen", "127.0.0.1:2"])).unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.cores, 3);
        assert_eq!(s.limits.max_last, 5);
        assert_eq!(s.limits.replay_page, Limits::default().replay_page);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings::resolve(cli(&["--listen", "nowhere"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`listen`"), "{err}");
        let err = Settings::resolve(cli(&["--redis", "http://x"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`redis`"), "{err}");
        let err = Settings::resolve(cli(&["--namespace", "ps.=kafka"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka"), "{err}");
        let err = Settings::resolve(cli(&["--replay-page", "0"])).unwrap_err().to_string();
        assert!(err.contains("limits.replay_page"), "{err}");
    }

    #[test]
    fn a_namespace_flag_may_name_its_policy_and_key() {
        let s = Settings::resolve(cli(&[
            "--namespace",
            "md.=stream:conflate:sym",
            "--namespace",
            "ps.=pubsub:drop_oldest",
            "--namespace",
            "raw.=stream",
        ]))
        .unwrap();
        let md = s.namespaces.of("md.BTC");
        assert_eq!(
            (md.slow_consumer, md.key.as_deref()),
            (SlowConsumer::Conflate, Some("sym"))
        );
        let ps = s.namespaces.of("ps.x");
        assert_eq!(
            (ps.source, ps.slow_consumer, ps.key.as_deref()),
            (Source::Pubsub, SlowConsumer::DropOldest, None)
        );
        assert_eq!(s.namespaces.of("raw.x").slow_consumer, SlowConsumer::Disconnect);
        for bad in ["md.=stream:newest", "md.=stream:conflate:", "md.=stream:"] {
            let err = Settings::resolve(cli(&["--namespace", bad])).unwrap_err().to_string();
            assert!(err.contains("namespaces"), "{bad}: {err}");
        }
    }

    #[test]
    fn write_coalescing_settings_are_read_and_bounded() {
        let s = Settings::resolve(cli(&["--write-delay-us", "2000", "--max-frames-per-write", "64"])).unwrap();
        assert_eq!((s.limits.write_delay_us, s.limits.max_frames_per_write), (2000, 64));
        assert!(!s.busy_poll);
        assert!(Settings::resolve(cli(&["--busy-poll"])).unwrap().busy_poll);
        let d = Settings::resolve(cli(&[])).unwrap();
        assert_eq!((d.limits.write_delay_us, d.limits.max_frames_per_write), (0, 1024));
        for (flag, value, key) in [
            ("--max-frames-per-write", "0", "limits.max_frames_per_write"),
            ("--max-frames-per-write", "1025", "limits.max_frames_per_write"),
            ("--write-delay-us", "1000001", "limits.write_delay_us"),
        ] {
            let err = Settings::resolve(cli(&[flag, value])).unwrap_err().to_string();
            assert!(err.contains(key), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn a_namespace_may_set_its_own_write_delay() {
        let dir = std::env::temp_dir().join(format!("fg-settings-wd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        let ns = "[[namespaces]]\nprefix = \"md.\"\nwrite_delay_us = 500\n";
        std::fs::write(&path, ns).unwrap();
        let s = Settings::resolve(cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(s.namespaces.of("md.x").write_delay_us, Some(500));
        assert_eq!(s.namespaces.of("other").write_delay_us, None);
        std::fs::write(&path, ns.replace("500", "2000000")).unwrap();
        let err = Settings::resolve(cli(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("namespaces.write_delay_us"), "{err}");
    }

    #[test]
    fn keys_carry_the_prefix() {
        let s = Settings::resolve(cli(&["--key-prefix", "fg:"])).unwrap();
        assert_eq!(s.key_of("md.x"), b"fg:md.x");
        assert_eq!(s.channel_of(b"fg:md.x"), Some("md.x"));
        assert_eq!(s.channel_of(b"other"), None);
    }
}
