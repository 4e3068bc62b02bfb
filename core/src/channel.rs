//! Channel names and the namespaces they belong to (PROTOCOL.md section 1).

use serde::Deserialize;

/// Longest channel name in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

//= PROTOCOL.md section 1
//# A channel name is 1 to 200 bytes of `A-Z a-z 0-9 _ . : @ / -`.
/// Whether `name` is a valid channel name. Valid names need no JSON escaping,
/// which lets frames splice them as they are.
pub fn is_valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'/' | b'-'))
}

/// Where a namespace's messages come from in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A Redis Stream: durable, ordered, replayable.
    #[default]
    Stream,
    /// Redis pub/sub: ephemeral, lowest latency.
    Pubsub,
}

impl Source {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Stream => "stream",
            Source::Pubsub => "pubsub",
        }
    }
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stream" => Ok(Source::Stream),
            "pubsub" => Ok(Source::Pubsub),
            other => Err(format!("unknown source `{other}` (expected `stream` or `pubsub`)")),
        }
    }
}

/// What happens to a client whose outbound queue is full (PROTOCOL.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumer {
    /// Close the connection with 4008; the client resumes with `since`.
    #[default]
    Disconnect,
    /// Drop that channel's oldest queued messages and announce the hole with `gap`.
    DropOldest,
    /// Replace a queued message by a newer one of the same channel (and key).
    Conflate,
}

impl SlowConsumer {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            SlowConsumer::Disconnect => "disconnect",
            SlowConsumer::DropOldest => "drop_oldest",
            SlowConsumer::Conflate => "conflate",
        }
    }
}

impl std::str::FromStr for SlowConsumer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disconnect" => Ok(SlowConsumer::Disconnect),
            "drop_oldest" => Ok(SlowConsumer::DropOldest),
            "conflate" => Ok(SlowConsumer::Conflate),
            other => Err(format!(
                "unknown slow_consumer `{other}` (expected `disconnect`, `drop_oldest` or `conflate`)"
            )),
        }
    }
}

/// One namespace: every channel whose name starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub prefix: String,
    #[serde(default)]
    pub source: Source,
    /// What a full outbound queue does to this namespace's deliveries.
    #[serde(default)]
    pub slow_consumer: SlowConsumer,
    /// The top-level payload field naming the instrument, for conflation and
    /// snapshots.
    #[serde(default)]
    pub key: Option<String>,
    /// The write delay of connections subscribed here, overriding
    /// `[limits] write_delay_us`.
    #[serde(default)]
    pub write_delay_us: Option<u64>,
}

/// The default namespace: streams, `disconnect`, no key.
static DEFAULT_NAMESPACE: Namespace = Namespace {
    prefix: String::new(),
    source: Source::Stream,
    slow_consumer: SlowConsumer::Disconnect,
    key: None,
    write_delay_us: None,
};

/// The configured namespaces; a channel belongs to the one with the longest
/// matching prefix, and to the default (stream) namespace when none matches.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    /// Sorted longest prefix first, so the first match is the longest.
    by_prefix_len: Vec<Namespace>,
}

impl Namespaces {
    /// Builds the lookup from configured namespaces.
    pub fn new(mut namespaces: Vec<Namespace>) -> Self {
        namespaces.sort_by_key(|ns| std::cmp::Reverse(ns.prefix.len()));
        Self {
            by_prefix_len: namespaces,
        }
    }

    /// The namespace `channel` belongs to.
    pub fn of(&self, channel: &str) -> &Namespace {
        self.by_prefix_len
            .iter()
            .find(|ns| channel.starts_with(ns.prefix.as_str()))
            .unwrap_or(&DEFAULT_NAMESPACE)
    }

    /// The source of `channel`.
    pub fn source_of(&self, channel: &str) -> Source {
        self.of(channel).source
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(is_valid_channel("md.BTC-USD"));
        assert!(is_valid_channel("a_b.c:d@e/f-g09"));
        assert!(is_valid_channel(&"x".repeat(200)));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", " ", "a b", "a\"b", "é", "a\\b", "a*", "a\n"] {
            assert!(!is_valid_channel(bad), "{bad:?}");
        }
        assert!(!is_valid_channel(&"x".repeat(201)));
    }

    #[test]
    fn sources_are_named_as_in_the_configuration() {
        for source in [Source::Stream, Source::Pubsub] {
            assert_eq!(source.as_str().parse::<Source>(), Ok(source));
        }
        assert_eq!(Source::Pubsub.as_str(), "pubsub");
        assert_eq!("stream".parse::<Source>(), Ok(Source::Stream));
        assert!("kafka".parse::<Source>().unwrap_err().contains("kafka"));
    }

    #[test]
    fn longest_prefix_wins() {
        let ns = Namespaces::new(vec![
            Namespace {
                prefix: "ps.".into(),
                source: Source::Pubsub,
                ..Namespace::default()
            },
            Namespace {
                prefix: "ps.durable.".into(),
                source: Source::Stream,
                slow_consumer: SlowConsumer::Conflate,
                key: Some("sym".into()),
                write_delay_us: None,
            },
        ]);
        assert_eq!(ns.source_of("ps.x"), Source::Pubsub);
        assert_eq!(ns.source_of("ps.durable.x"), Source::Stream);
        assert_eq!(ns.source_of("md.x"), Source::Stream);
        assert_eq!(ns.of("ps.durable.x").key.as_deref(), Some("sym"));
        assert_eq!(ns.of("ps.x").slow_consumer, SlowConsumer::Disconnect);
        assert_eq!(ns.of("md.x"), &DEFAULT_NAMESPACE);
    }

    #[test]
    fn slow_consumer_policies_parse_by_their_config_names() {
        for policy in [
            SlowConsumer::Disconnect,
            SlowConsumer::DropOldest,
            SlowConsumer::Conflate,
        ] {
            assert_eq!(policy.as_str().parse::<SlowConsumer>(), Ok(policy));
        }
        assert!("drop_newest"
            .parse::<SlowConsumer>()
            .unwrap_err()
            .contains("drop_newest"));
    }

    proptest! {
        #[test]
        fn valid_names_need_no_json_escaping(name in "[A-Za-z0-9_.:@/-]{1,200}") {
            prop_assert!(is_valid_channel(&name));
            let quoted = serde_json::to_string(&name).unwrap();
            prop_assert_eq!(quoted, format!("\"{name}\""));
        }

        /// One byte outside the alphabet anywhere, or a name too long, is refused:
        /// what makes splicing accepted names unescaped safe.
        #[test]
        fn any_other_name_is_refused(
            head in "[A-Za-z0-9_.:@/-]{0,100}",
            bad in "[^A-Za-z0-9_.:@/-]",
            tail in "[A-Za-z0-9_.:@/-]{0,99}",
        ) {
            let name = format!("{head}{bad}{tail}");
            prop_assert!(!is_valid_channel(&name), "{:?}", name);
        }

        #[test]
        fn names_over_200_bytes_are_refused(name in "[A-Za-z0-9_.:@/-]{201,400}") {
            prop_assert!(!is_valid_channel(&name));
        }
    }
}
