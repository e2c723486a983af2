//! MQTT topic names and filters, built without allocation and parsed back.
//!
//! Every topic the agent and the server use comes from here, never from `format!`. Each id
//! that becomes a topic level is validated first, so a hostile or misconfigured id cannot add
//! levels or wildcards to a topic (or escape a broker ACL).
//!
//! | topic | publisher | subscriber |
//! |---|---|---|
//! | `{p}/{cluster}/agents/{agent}/login` | agent (`Uplink::Login`) | servers, through the shared subscription `$share/ekattest/{p}/{cluster}/agents/+/login` |
//! | `{p}/{cluster}/agents/{agent}/down` | server (`Downlink`: Challenge, then Result) | the agent |
//! | `{p}/{cluster}/servers/{node}/answer/{agent}` | agent (`Uplink::Answer`) | node `{node}`: `{p}/{cluster}/servers/{node}/answer/+` |
//! | `{p}/{cluster}/config` | `ekattestctl config set` (retained) | every server |
//!
//! `{p}` is the prefix (default [`DEFAULT_PREFIX`]). Challenge and Result share one downlink
//! topic: the `Downlink` enum already tells them apart, MQTT keeps one topic's messages in
//! order, and the agent subscribes to exactly its own downlink topic (a subscription to
//! `agents/{agent}/#` would echo its own Login back). Broker ACLs can pin a device to its
//! topics with its client id: `pattern write ekattest/v1/+/agents/%c/login`,
//! `pattern write ekattest/v1/+/servers/+/answer/%c`, `pattern read ekattest/v1/+/agents/%c/down`.
//!
//! This module never panics and never allocates: topics are `heapless::String<TOPIC_MAX>`.

use core::fmt;

use heapless::String;

use crate::limits::{AGENT_ID_MAX, CLUSTER_ID_MAX, NODE_ID_MAX, TOPIC_MAX, TOPIC_PREFIX_MAX};

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "ekattest/v1";

/// The shared-subscription group all servers of a cluster join.
pub const SHARE_GROUP: &str = "ekattest";

/// A built topic or topic filter.
pub type Topic = String<TOPIC_MAX>;

/// Which part of a topic an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The topic prefix.
    Prefix,
    /// The cluster id.
    Cluster,
    /// An agent id.
    Agent,
    /// A server node id.
    Node,
}

impl Part {
    const fn name(self) -> &'static str {
        match self {
            Self::Prefix => "topic prefix",
            Self::Cluster => "cluster id",
            Self::Agent => "agent id",
            Self::Node => "node id",
        }
    }

    const fn limit(self) -> usize {
        match self {
            Self::Prefix => TOPIC_PREFIX_MAX,
            Self::Cluster => CLUSTER_ID_MAX,
            Self::Agent => AGENT_ID_MAX,
            Self::Node => NODE_ID_MAX,
        }
    }
}

/// Why an id cannot be a topic level, or a topic is not one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// The id (or a level of the prefix) is empty.
    Empty {
        /// Which id.
        part: Part,
    },
    /// The id is longer than its bound in [`crate::limits`].
    TooLong {
        /// Which id.
        part: Part,
        /// Its length in bytes.
        len: usize,
        /// The bound.
        limit: usize,
    },
    /// The id holds a character outside `A-Z a-z 0-9 - _ .` (for the prefix, `/` also
    /// separates levels). This excludes the MQTT wildcards `+` `#`, the level separator `/`,
    /// NUL, `$` (reserved for broker topics) and anything an ACL pattern could misread.
    BadChar {
        /// Which id.
        part: Part,
        /// The character.
        ch: char,
        /// Its byte offset in the id.
        at: usize,
    },
    /// A received topic does not have any of the shapes this module builds.
    NotOurs,
    /// The built topic does not fit [`TOPIC_MAX`] (not reachable with validated ids; kept
    /// so building can never panic).
    Overflow,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { part } => write!(f, "{} is empty (or has an empty level)", part.name()),
            Self::TooLong { part, len, limit } => write!(
                f,
                "{} is {len} bytes long; the limit is {limit}",
                part.name()
            ),
            Self::BadChar { part, ch, at } => write!(
                f,
                "{} has {ch:?} at byte {at}; use only A-Z a-z 0-9 - _ .",
                part.name()
            ),
            Self::NotOurs => f.write_str("topic is not an ekattest topic of this cluster"),
            Self::Overflow => write!(f, "topic longer than {TOPIC_MAX} bytes"),
        }
    }
}

impl core::error::Error for TopicError {}

const fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')
}

/// Checks that `id` can be one topic level for `part` (for [`Part::Prefix`], one or more
/// levels separated by `/`).
///
/// # Errors
/// [`TopicError::Empty`], [`TopicError::TooLong`] or [`TopicError::BadChar`].
pub fn validate(part: Part, id: &str) -> Result<(), TopicError> {
    if id.is_empty() {
        return Err(TopicError::Empty { part });
    }
    if id.len() > part.limit() {
        return Err(TopicError::TooLong {
            part,
            len: id.len(),
            limit: part.limit(),
        });
    }
    let mut level_start = true;
    for (at, ch) in id.char_indices() {
        let separator = part == Part::Prefix && ch == '/';
        if separator && level_start {
            return Err(TopicError::Empty { part });
        }
        if !(separator || u8::try_from(ch).is_ok_and(allowed)) {
            return Err(TopicError::BadChar { part, ch, at });
        }
        level_start = separator;
    }
    if level_start {
        return Err(TopicError::Empty { part });
    }
    Ok(())
}

/// The default agent id for an EK: `ek-` and the first 32 hex digits (16 bytes) of its
/// `tpm_ek.public_hash`.
#[must_use]
pub fn default_agent_id(public_hash: &[u8; 32]) -> String<AGENT_ID_MAX> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const _: () = assert!(3 + 32 <= AGENT_ID_MAX);
    let mut id = String::new();
    // Cannot fail: 35 bytes fit AGENT_ID_MAX (checked above at compile time).
    let _ = id.push_str("ek-");
    for &byte in &public_hash[..16] {
        let _ = id.push(char::from(HEX[usize::from(byte >> 4)]));
        let _ = id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

/// Why a topic has no NATS subject ([`write_nats_subject`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectError {
    /// The topic is empty or has an empty level (`a//b`).
    EmptyLevel,
    /// The topic holds a space, which NATS subjects cannot carry.
    Space,
    /// The output refused a character (a full buffer).
    Write,
}

impl fmt::Display for SubjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EmptyLevel => "has an empty level",
            Self::Space => "holds a space",
            Self::Write => "does not fit the subject buffer",
        })
    }
}

/// Writes the NATS subject nats-server's MQTT gateway uses for MQTT `topic` (or filter):
/// levels joined by `.`, `+` as `*`, `#` as `>`, a `.` inside a level as `//`. The one
/// mapping the server's NATS bus and the test kit's NATS accounts share.
///
/// # Errors
/// [`SubjectError`] for an empty level or a space (topics of ours never have either), or
/// when `out` refuses a character.
pub fn write_nats_subject(topic: &str, out: &mut impl fmt::Write) -> Result<(), SubjectError> {
    if topic.is_empty() || topic.split('/').any(str::is_empty) {
        return Err(SubjectError::EmptyLevel);
    }
    if topic.contains(' ') {
        return Err(SubjectError::Space);
    }
    for (i, level) in topic.split('/').enumerate() {
        let r = if i > 0 { out.write_char('.') } else { Ok(()) };
        r.map_err(|_| SubjectError::Write)?;
        let r = match level {
            "+" => out.write_char('*'),
            "#" => out.write_char('>'),
            _ => level.split('.').enumerate().try_for_each(|(j, piece)| {
                if j > 0 {
                    out.write_str("//")?;
                }
                out.write_str(piece)
            }),
        };
        r.map_err(|_| SubjectError::Write)?;
    }
    Ok(())
}

/// A topic received from the broker, as [`Topics::parse`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'t> {
    /// `{p}/{cluster}/agents/{agent}/login`: a Login from `agent`.
    Login {
        /// The agent id (validated).
        agent: &'t str,
    },
    /// `{p}/{cluster}/agents/{agent}/down`: a Downlink for `agent`.
    Down {
        /// The agent id (validated).
        agent: &'t str,
    },
    /// `{p}/{cluster}/servers/{node}/answer/{agent}`: an Answer from `agent` to `node`.
    Answer {
        /// The server node id (validated).
        node: &'t str,
        /// The agent id (validated).
        agent: &'t str,
    },
    /// `{p}/{cluster}/config`: a configuration document.
    Config,
}

/// Topic builder for one prefix and cluster; both are validated once by [`Topics::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topics<'a> {
    prefix: &'a str,
    cluster: &'a str,
}

impl<'a> Topics<'a> {
    /// Topics under `prefix` for `cluster`.
    ///
    /// # Errors
    /// A [`TopicError`] naming the prefix or cluster id that cannot be used.
    pub fn new(prefix: &'a str, cluster: &'a str) -> Result<Self, TopicError> {
        validate(Part::Prefix, prefix)?;
        validate(Part::Cluster, cluster)?;
        Ok(Self { prefix, cluster })
    }

    /// Topics under [`DEFAULT_PREFIX`] for `cluster`.
    ///
    /// # Errors
    /// A [`TopicError`] if `cluster` cannot be a topic level.
    pub fn with_default_prefix(cluster: &'a str) -> Result<Self, TopicError> {
        Self::new(DEFAULT_PREFIX, cluster)
    }

    /// The prefix.
    #[must_use]
    pub const fn prefix(&self) -> &'a str {
        self.prefix
    }

    /// The cluster id.
    #[must_use]
    pub const fn cluster(&self) -> &'a str {
        self.cluster
    }

    fn build(&self, parts: &[&str]) -> Result<Topic, TopicError> {
        let mut topic = Topic::new();
        for part in [self.prefix, "/", self.cluster].iter().chain(parts) {
            topic.push_str(part).map_err(|_| TopicError::Overflow)?;
        }
        Ok(topic)
    }

    /// `{p}/{cluster}/agents/{agent}/login`: where `agent` publishes its Login.
    ///
    /// # Errors
    /// A [`TopicError`] if `agent` cannot be a topic level.
    pub fn login(&self, agent: &str) -> Result<Topic, TopicError> {
        validate(Part::Agent, agent)?;
        self.build(&["/agents/", agent, "/login"])
    }

    /// `{p}/{cluster}/agents/{agent}/down`: where servers publish Challenge and Result for
    /// `agent`, and what the agent subscribes to.
    ///
    /// # Errors
    /// A [`TopicError`] if `agent` cannot be a topic level.
    pub fn down(&self, agent: &str) -> Result<Topic, TopicError> {
        validate(Part::Agent, agent)?;
        self.build(&["/agents/", agent, "/down"])
    }

    /// `{p}/{cluster}/servers/{node}/answer/{agent}`: where `agent` publishes its Answer to
    /// the node named in the Challenge.
    ///
    /// # Errors
    /// A [`TopicError`] if `node` or `agent` cannot be a topic level.
    pub fn answer(&self, node: &str, agent: &str) -> Result<Topic, TopicError> {
        validate(Part::Node, node)?;
        validate(Part::Agent, agent)?;
        self.build(&["/servers/", node, "/answer/", agent])
    }

    /// `{p}/{cluster}/config`: the retained configuration document.
    ///
    /// # Errors
    /// [`TopicError::Overflow`] only (not reachable with validated ids).
    pub fn config(&self) -> Result<Topic, TopicError> {
        self.build(&["/config"])
    }

    /// `{p}/{cluster}/agents/+/login`: every Login (for brokers without shared
    /// subscriptions, or a single server).
    ///
    /// # Errors
    /// [`TopicError::Overflow`] only (not reachable with validated ids).
    pub fn logins_filter(&self) -> Result<Topic, TopicError> {
        self.build(&["/agents/+/login"])
    }

    /// `$share/ekattest/{p}/{cluster}/agents/+/login`: the servers' shared subscription, so
    /// each Login reaches one server node.
    ///
    /// # Errors
    /// [`TopicError::Overflow`] only (not reachable with validated ids).
    pub fn shared_logins_filter(&self) -> Result<Topic, TopicError> {
        let filter = self.logins_filter()?;
        let mut topic = Topic::new();
        for part in ["$share/", SHARE_GROUP, "/", filter.as_str()] {
            topic.push_str(part).map_err(|_| TopicError::Overflow)?;
        }
        Ok(topic)
    }

    /// `{p}/{cluster}/servers/{node}/answer/+`: the Answers addressed to server `node`.
    ///
    /// # Errors
    /// A [`TopicError`] if `node` cannot be a topic level.
    pub fn answers_filter(&self, node: &str) -> Result<Topic, TopicError> {
        validate(Part::Node, node)?;
        self.build(&["/servers/", node, "/answer/+"])
    }

    /// Reads a topic received from the broker (the real topic, never a filter or a
    /// `$share/...` name) and returns what it is and the ids in it, validated.
    ///
    /// # Errors
    /// [`TopicError::NotOurs`] if it is not one of this prefix's and cluster's topics; an
    /// id error if an id in it is invalid.
    pub fn parse<'t>(&self, topic: &'t str) -> Result<Inbound<'t>, TopicError> {
        let rest = topic
            .strip_prefix(self.prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_prefix(self.cluster))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or(TopicError::NotOurs)?;
        let mut levels = rest.split('/');
        let inbound = match (levels.next(), levels.next(), levels.next(), levels.next()) {
            (Some("config"), None, ..) => Inbound::Config,
            (Some("agents"), Some(agent), Some("login"), None) => Inbound::Login { agent },
            (Some("agents"), Some(agent), Some("down"), None) => Inbound::Down { agent },
            (Some("servers"), Some(node), Some("answer"), Some(agent)) => {
                if levels.next().is_some() {
                    return Err(TopicError::NotOurs);
                }
                validate(Part::Node, node)?;
                Inbound::Answer { node, agent }
            }
            _ => return Err(TopicError::NotOurs),
        };
        match inbound {
            Inbound::Login { agent } | Inbound::Down { agent } | Inbound::Answer { agent, .. } => {
                validate(Part::Agent, agent)?;
            }
            Inbound::Config => {}
        }
        Ok(inbound)
    }
}
