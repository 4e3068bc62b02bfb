//! The configuration file's types, its defaults, and the Redis URL.
//!
//! Every key is optional in the file; the server merges file, environment and
//! flags (flags win over env, env over file) and then applies [`Limits::default`].

use serde::Deserialize;

use crate::channel::Namespace;

/// The TOML file, as written. Unknown keys are refused with their name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on, `host:port`.
    pub listen: Option<String>,
    /// `redis://[user:pass@]host:port[/db]`.
    pub redis: Option<String>,
    /// Cores to run on (one pinned thread each).
    pub cores: Option<usize>,
    /// Prefix added to a channel's name to make its Redis key or pub/sub channel.
    pub key_prefix: Option<String>,
    /// Log filter (`info`, `debug`, `feedgate=debug`...).
    pub log: Option<String>,
    /// Cores never sleep in the kernel while idle (a latency mode for dedicated cores).
    pub busy_poll: Option<bool>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
}

/// `[limits]` as written; missing keys take [`Limits::default`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_message_bytes: Option<usize>,
    pub max_subscriptions: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    pub ping_interval_ms: Option<u64>,
    pub pong_timeout_ms: Option<u64>,
    pub max_last: Option<u64>,
    pub replay_page: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_ops_per_sec: Option<u32>,
    pub op_burst: Option<u32>,
    pub max_replays_per_core: Option<usize>,
    pub write_delay_us: Option<u64>,
    pub max_frames_per_write: Option<usize>,
}

/// Per-connection limits and timings, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest client message, in bytes; a larger one is closed with 1009.
    pub max_message_bytes: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Bytes of frames queued for one client before it is closed with 4008.
    pub outbound_queue_bytes: usize,
    /// How often the server pings each connection.
    pub ping_interval_ms: u64,
    /// How long a connection may stay silent after a ping before it is closed.
    pub pong_timeout_ms: u64,
    /// Largest `last` a subscribe may ask for.
    pub max_last: u64,
    /// Entries fetched per XRANGE page during a replay.
    pub replay_page: u64,
    /// WebSocket connections the process holds at once; past it an upgrade is
    /// closed at once with 1013.
    pub max_connections: usize,
    /// Connections one source IP may hold at once; 0 means no limit.
    pub max_connections_per_ip: usize,
    /// Ops per second one connection may send (a token bucket refill rate).
    pub max_ops_per_sec: u32,
    /// Ops one connection may send at once before the rate applies.
    pub op_burst: u32,
    /// Replays (`since`, `last`) a core runs at once; more wait their turn. With
    /// the replay window this bounds the history a core holds in memory.
    pub max_replays_per_core: usize,
    /// How long a connection's writer waits after the first queued delivery
    /// for more, to send them in one write; 0 sends at once.
    pub write_delay_us: u64,
    /// Most frames one write carries (at most [`MAX_FRAMES_PER_WRITE`]); a
    /// batch that reaches it is written without waiting out the delay.
    pub max_frames_per_write: usize,
}

/// The most frames one write may carry: Linux's `IOV_MAX`.
pub const MAX_FRAMES_PER_WRITE: usize = 1024;

/// The longest write delay accepted, in microseconds: past a second it is no
/// longer batching but a stall.
pub const MAX_WRITE_DELAY_US: u64 = 1_000_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_subscriptions: 1024,
            outbound_queue_bytes: 8 * 1024 * 1024,
            ping_interval_ms: 20_000,
            pong_timeout_ms: 20_000,
            max_last: 10_000,
            replay_page: 1_000,
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_ops_per_sec: 100,
            op_burst: 1024,
            max_replays_per_core: 64,
            write_delay_us: 0,
            max_frames_per_write: MAX_FRAMES_PER_WRITE,
        }
    }
}

/// A configuration value that is not acceptable, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct BadValue {
    pub key: &'static str,
    pub reason: String,
}

impl Limits {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), BadValue> {
        let positive = [
            ("limits.max_message_bytes", self.max_message_bytes as u64),
            ("limits.max_subscriptions", self.max_subscriptions as u64),
            ("limits.outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("limits.ping_interval_ms", self.ping_interval_ms),
            ("limits.pong_timeout_ms", self.pong_timeout_ms),
            ("limits.replay_page", self.replay_page),
            ("limits.max_connections", self.max_connections as u64),
            ("limits.max_ops_per_sec", u64::from(self.max_ops_per_sec)),
            ("limits.op_burst", u64::from(self.op_burst)),
            ("limits.max_replays_per_core", self.max_replays_per_core as u64),
            ("limits.max_frames_per_write", self.max_frames_per_write as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(BadValue {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        if self.max_frames_per_write > MAX_FRAMES_PER_WRITE {
            return Err(BadValue {
                key: "limits.max_frames_per_write",
                reason: format!("must be at most {MAX_FRAMES_PER_WRITE} (IOV_MAX)"),
            });
        }
        check_write_delay("limits.write_delay_us", self.write_delay_us)
    }
}

/// Checks a write delay (the `[limits]` one or a namespace's).
pub fn check_write_delay(key: &'static str, delay_us: u64) -> Result<(), BadValue> {
    if delay_us > MAX_WRITE_DELAY_US {
        return Err(BadValue {
            key,
            reason: format!("must be at most {MAX_WRITE_DELAY_US} microseconds"),
        });
    }
    Ok(())
}

/// A parsed `redis://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl std::str::FromStr for RedisUrl {
    type Err = String;

    /// Parses `redis://[user:pass@]host:port[/db]` (port defaults to 6379).
    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("`{url}` must start with redis:// (TLS is not supported yet)"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((hp, "")) => (hp, 0),
            Some((hp, db)) => (hp, db.parse().map_err(|_| format!("database `{db}` is not a number"))?),
            None => (rest, 0),
        };
        // A bracketed IPv6 host may carry a port after its `]`, or none.
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !hostport.ends_with(']') => {
                (h, p.parse().map_err(|_| format!("port `{p}` is not a number"))?)
            }
            _ => (hostport, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("host is missing".into());
        }
        let (username, password) = match auth {
            None => (None, None),
            Some(auth) => match auth.split_once(':') {
                Some(("", pass)) => (None, Some(pass.to_owned())),
                Some((user, pass)) => (Some(user.to_owned()), Some(pass.to_owned())),
                None => (None, Some(auth.to_owned())),
            },
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            username,
            password,
            db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Source;

    #[test]
    fn the_minimal_test_file_parses() {
        let file: FileConfig = toml::from_str("[[namespaces]]\nprefix = \"ps.\"\nsource = \"pubsub\"\n").unwrap();
        assert_eq!(file.namespaces[0].source, Source::Pubsub);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = toml::from_str::<FileConfig>("lisen = \"x\"").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = toml::from_str::<FileConfig>("[limits]\nmax_frame = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_frame"), "{err}");
        let err = toml::from_str::<FileConfig>("[[namespaces]]\nprefix=\"a\"\nsource=\"kafka\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka"), "{err}");
    }

    #[test]
    fn zero_limits_are_refused() {
        let limits = Limits {
            replay_page: 0,
            ..Limits::default()
        };
        assert_eq!(limits.validate().unwrap_err().key, "limits.replay_page");
    }

    #[test]
    fn redis_urls() {
        let u: RedisUrl = "redis://127.0.0.1:6390".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6390, 0));
        let u: RedisUrl = "redis://me:s3cr@t@localhost:1/2".parse().unwrap();
        assert_eq!(u.username.as_deref(), Some("me"));
        assert_eq!(u.password.as_deref(), Some("s3cr@t"));
        assert_eq!((u.host.as_str(), u.port, u.db), ("localhost", 1, 2));
        let u: RedisUrl = "redis://:pw@h".parse().unwrap();
        assert_eq!((u.username, u.password, u.port), (None, Some("pw".into()), 6379));
        let u: RedisUrl = "redis://[::1]:6391".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 6391));
        let u: RedisUrl = "redis://[::1]".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 6379));
        assert!("http://x".parse::<RedisUrl>().is_err());
        assert!("redis://h:notaport".parse::<RedisUrl>().is_err());
        assert!("redis://h:1/x".parse::<RedisUrl>().is_err());
    }
}
