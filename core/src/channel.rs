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

/// One namespace: every channel whose name starts with `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    pub prefix: String,
    #[serde(default)]
    pub source: Source,
}

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

    /// The source of `channel`.
    pub fn source_of(&self, channel: &str) -> Source {
        self.by_prefix_len
            .iter()
            .find(|ns| channel.starts_with(ns.prefix.as_str()))
            .map(|ns| ns.source)
            .unwrap_or_default()
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
            },
            Namespace {
                prefix: "ps.durable.".into(),
                source: Source::Stream,
            },
        ]);
        assert_eq!(ns.source_of("ps.x"), Source::Pubsub);
        assert_eq!(ns.source_of("ps.durable.x"), Source::Stream);
        assert_eq!(ns.source_of("md.x"), Source::Stream);
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
