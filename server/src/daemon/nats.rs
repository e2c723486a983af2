//! `bus: nats`: the server on a NATS cluster while agents stay on MQTT (they connect to the
//! MQTT listeners of the same nats-server cluster).
//!
//! Subjects are the MQTT topics converted exactly as nats-server's MQTT gateway converts
//! them (nats-server docs, "MQTT topic to NATS subject"): `/` becomes `.`, a `.` inside a
//! level becomes `//` (nats-server 2.10 and later; 2.9 refuses such topics, so the config
//! keeps `.` out of the cluster id, node id and prefix), `+` becomes `*` and `#` becomes
//! `>`. So an agent publishing `ekattest/v1/c-1/agents/ek-ab/login` over MQTT reaches a
//! server subscribed to `ekattest.v1.c-1.agents.*.login`, and a server publishing
//! `ekattest.v1.c-1.agents.ek-ab.down` reaches the agent's MQTT subscription. Logins use
//! the queue group [`SHARE_GROUP`] (NATS-native work splitting, which works across cluster
//! nodes where nats-server's MQTT `$share` does not); answers use this node's own subject;
//! with `policy-topic: true` every server subscribes to the config subject (live documents only: MQTT retained
//! messages are not replayed to NATS subscribers, so use policy-files or set the document
//! while servers run).
//!
//! Like the MQTT loop, the receive loop never blocks: refusals go through a bounded queue
//! that drops when full. Topics with empty levels or spaces (which the gateway escapes or
//! refuses and ours never have) are not converted: they are errors, never guesses.

use std::sync::Arc;

use async_nats::{Client, ConnectOptions, Event, Message, Subscriber};
use ekattest_protocol::topic::{self, SHARE_GROUP, Topics};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::bus;
use super::config::ServerConfig;
use super::handler::Outbox;
use super::metrics::{FrameRejection, Metrics};
use super::router::{Refusals, Router, shutdown_signal};
use super::{DRAIN_TIMEOUT, DaemonError};

/// Refusals queued for publishing before further ones are dropped.
const REFUSAL_QUEUE: usize = 1024;

/// The NATS subject nats-server's MQTT gateway uses for MQTT `topic` (or filter).
///
/// # Errors
/// A message if the topic has an empty level or a space (ours never do).
pub fn subject_of(topic: &str) -> Result<String, String> {
    let mut out = String::with_capacity(topic.len() + 8);
    topic::write_nats_subject(topic, &mut out).map_err(|e| format!("{topic:?} {e}"))?;
    Ok(out)
}

/// The MQTT topic of a NATS `subject` (the inverse of [`subject_of`]); `None` for a subject
/// no topic of ours maps to (escaped empty levels, wildcards).
pub fn topic_of(subject: &str) -> Option<String> {
    let bytes = subject.as_bytes();
    let mut out = String::with_capacity(subject.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                out.push('.');
                i += 2;
                continue;
            }
            b'/' | b'*' | b'>' => return None,
            b'.' => out.push('/'),
            _ => {
                // Multi-byte UTF-8 passes through unchanged (the topic parser refuses it).
                let rest = subject.get(i..)?;
                let c = rest.chars().next()?;
                out.push(c);
                i += c.len_utf8();
                continue;
            }
        }
        i += 1;
    }
    if out.is_empty() || out.split('/').any(str::is_empty) {
        return None;
    }
    Some(out)
}

/// Workers' [`Outbox`] on NATS: waits (on a worker thread, never the receive loop) while the
/// client's queue is full.
pub(super) struct NatsOutbox {
    pub(super) client: Client,
    pub(super) runtime: tokio::runtime::Handle,
}

impl Outbox for NatsOutbox {
    fn send(&self, topic: &str, frame: Vec<u8>) -> Result<(), String> {
        let subject = subject_of(topic)?;
        self.runtime
            .block_on(self.client.publish(subject, frame.into()))
            .map_err(|e| e.to_string())
    }
}

/// The receive loop's refusals: a bounded queue to a publishing task; full means dropped.
struct NatsRefusals {
    tx: mpsc::Sender<(String, Vec<u8>)>,
}

impl Refusals for NatsRefusals {
    fn try_send(&self, topic: &str, frame: Vec<u8>) -> Result<(), String> {
        let subject = subject_of(topic)?;
        self.tx
            .try_send((subject, frame))
            .map_err(|e| e.to_string())
    }
}

/// Connects to `nats-url` (in the background: the daemon starts, and keeps retrying, while
/// the cluster is down).
///
/// # Errors
/// [`DaemonError`] for unusable TLS files or URLs.
pub(super) async fn connect(
    config: &ServerConfig,
    urls: &[String],
    metrics: Arc<Metrics>,
) -> Result<Client, DaemonError> {
    let addrs = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DaemonError::Nats(format!("nats-url: {e}")))?;
    let mut options = ConnectOptions::new()
        .name(format!("ekattest-server-{}", config.node_id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(1024)
        // Never a process-default rustls provider: always our aws-lc-rs configuration.
        .tls_client_config(bus::tls_config(&config.tls)?)
        .event_callback(move |event| {
            let metrics = Arc::clone(&metrics);
            async move { log_event(&event, &metrics) }
        });
    if config.broker.tls {
        options = options.require_tls(true);
    }
    if let Some(user) = &config.username {
        let password = config
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        options = options.user_and_password(user.clone(), password);
    }
    options
        .connect(addrs)
        .await
        .map_err(|e| DaemonError::Nats(e.to_string()))
}

fn log_event(event: &Event, metrics: &Metrics) {
    match event {
        Event::Connected => {
            metrics.set_broker_connected(true);
            log::info!("connected to NATS");
        }
        Event::Disconnected => {
            metrics.set_broker_connected(false);
            log::warn!("NATS connection lost; reconnecting (sessions are kept)");
        }
        Event::SlowConsumer(sid) => {
            log::warn!(subscription = *sid; "NATS slow consumer: messages dropped; agents retry")
        }
        other => log::info!(event:% = other; "NATS event"),
    }
}

/// The three subscriptions of a node.
pub(super) struct Subscriptions {
    logins: Subscriber,
    answers: Subscriber,
    /// Only with `policy-topic: true`.
    config: Option<Subscriber>,
}

/// Subscribes the queue group for logins, this node's answers and (with `policy_topic`) the
/// config subject, and
/// returns the receive loop's refusal sender (its publishing task runs until the client
/// closes).
///
/// # Errors
/// [`DaemonError::Nats`] if a subscription cannot be made.
pub(super) async fn subscribe(
    client: &Client,
    prefix: &str,
    cluster: &str,
    node: &str,
    policy_topic: bool,
) -> Result<(Subscriptions, Box<dyn Refusals>), DaemonError> {
    let topics = Topics::new(prefix, cluster).map_err(|e| DaemonError::Node(e.to_string()))?;
    let subject = |t: Result<ekattest_protocol::topic::Topic, _>| {
        t.map_err(|e: ekattest_protocol::topic::TopicError| DaemonError::Node(e.to_string()))
            .and_then(|t| subject_of(t.as_str()).map_err(DaemonError::Nats))
    };
    let logins = subject(topics.logins_filter())?;
    let answers = subject(topics.answers_filter(node))?;
    let config = subject(topics.config())?;
    let err = |e: async_nats::SubscribeError| DaemonError::Nats(format!("subscribe: {e}"));
    let subs = Subscriptions {
        logins: client
            .queue_subscribe(logins, SHARE_GROUP.to_owned())
            .await
            .map_err(err)?,
        answers: client.subscribe(answers).await.map_err(err)?,
        config: if policy_topic {
            Some(client.subscribe(config).await.map_err(err)?)
        } else {
            None
        },
    };
    let (tx, mut rx) = mpsc::channel::<(String, Vec<u8>)>(REFUSAL_QUEUE);
    let publisher = client.clone();
    tokio::spawn(async move {
        while let Some((subject, frame)) = rx.recv().await {
            if publisher.publish(subject, frame.into()).await.is_err() {
                return;
            }
        }
    });
    Ok((subs, Box::new(NatsRefusals { tx })))
}

/// Routes received messages until SIGTERM/SIGINT (or the client closes).
pub(super) async fn drive(router: Router, mut subs: Subscriptions) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => return,
            Some(m) = subs.logins.next() => m,
            Some(m) = subs.answers.next() => m,
            Some(m) = next_config(&mut subs.config) => m,
            else => return,
        };
        route(&router, &message);
    }
}

/// The next config-subject message, or never without the subscription.
async fn next_config(config: &mut Option<Subscriber>) -> Option<Message> {
    match config {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

fn route(router: &Router, message: &Message) {
    match topic_of(message.subject.as_str()) {
        Some(topic) => router.route(&topic, &message.payload),
        None => {
            router.metrics.frame_received(message.payload.len());
            router.metrics.frame_rejected(FrameRejection::UnknownTopic);
        }
    }
}

/// After the receive loop: lets the workers finish (they publish through the client), then
/// flushes what is queued.
pub(super) async fn finish(client: &Client, workers: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT * 3, workers).await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, client.flush()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_as_the_nats_mqtt_gateway_does() {
        for (topic, subject) in [
            (
                "ekattest/v1/c-1/agents/ek-ab/login",
                "ekattest.v1.c-1.agents.ek-ab.login",
            ),
            (
                "ekattest/v1/c-1/servers/n1/answer/+",
                "ekattest.v1.c-1.servers.n1.answer.*",
            ),
            (
                "ekattest/v1/c-1/agents/+/login",
                "ekattest.v1.c-1.agents.*.login",
            ),
            ("spBv1.0/plant1", "spBv1//0.plant1"),
            ("a/#", "a.>"),
            ("cold-1.temp", "cold-1//temp"),
        ] {
            assert_eq!(subject_of(topic).unwrap(), subject, "{topic}");
            if !topic.contains(['+', '#']) {
                assert_eq!(topic_of(subject).as_deref(), Some(topic), "{subject}");
            }
        }
    }

    #[test]
    fn dotted_levels_round_trip() {
        for topic in ["a/.b", "a./b", "a..b/c", "x/y.z/w"] {
            let s = subject_of(topic).unwrap();
            assert_eq!(topic_of(&s).as_deref(), Some(topic), "{topic} -> {s}");
        }
    }

    #[test]
    fn escaped_and_wildcard_subjects_are_not_ours() {
        for subject in ["/.a.b", "a.b./", "a./.b", "a.*.b", "a.>", "", "a..b", "a/b"] {
            assert_eq!(topic_of(subject), None, "{subject}");
        }
        for topic in ["/a", "a/", "a//b", "", "a b/c"] {
            assert!(subject_of(topic).is_err(), "{topic}");
        }
    }
}
