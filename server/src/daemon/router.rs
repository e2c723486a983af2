//! The receive side: [`Router`] checks and routes each received message (MQTT or NATS) to
//! the worker queue, the reload inbox or a refusal; the MQTT event loop (the NATS one is in
//! `nats.rs`) routes each received publish to the worker queue, the reload inbox
//! or a refusal, reconnects with jittered backoff, and stops on SIGTERM/SIGINT.
//!
//! This task must never block or wait on an agent: a full worker queue refuses the Login
//! with `server busy`, refusals use `try_publish` (a full client queue drops them, the agent
//! retries), and policy parsing happens on the reload thread.
//!
//! Cheapest checks first, so a flood costs as little as possible: the topic (an unknown one
//! is dropped), then the login rate limit of the agent the topic names
//! ([`LoginLimiter`], before the frame is even decoded), then the payload size (larger than
//! any valid uplink frame: `oversize`), then the decode; only a frame that passes all of
//! these reaches the queue and the workers' certificate and public-key work. Every refusal
//! is counted under its own `attestation_frames_rejected_total{reason}`.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ekattest_protocol::msg::{Downlink, Login, Outcome, Rejected, Uplink, encode_legacy_rejection};
use ekattest_protocol::topic::{Inbound, Topics, default_agent_id};
use ekattest_protocol::tpm::public::Public;
use ekattest_protocol::{DecodeError, RejectCode, decode, limits, sign};
use rumqttc::{AsyncClient, Event, EventLoop, Packet, Publish, QoS, SubscribeFilter};

use super::handler::{Job, downlink_frame, log_rejection};
use super::metrics::{FrameRejection, Metrics};
use super::ratelimit::LoginLimiter;
use super::reload::Inbox;
use super::{DRAIN_TIMEOUT, RECONNECT_MAX, RECONNECT_MIN, bus};
use crate::attest::Rejection;
use crate::config::signed::ENVELOPE_MAX;

/// Where the receive loop's refusals go: never waits (a full queue drops the refusal; the
/// agent retries).
pub(super) trait Refusals: Send + Sync {
    /// Queues `frame` for MQTT `topic` without waiting.
    fn try_send(&self, topic: &str, frame: Vec<u8>) -> Result<(), String>;
}

impl Refusals for AsyncClient {
    fn try_send(&self, topic: &str, frame: Vec<u8>) -> Result<(), String> {
        self.try_publish(topic, QoS::AtLeastOnce, false, frame)
            .map_err(|e| e.to_string())
    }
}

/// Routes each received message (MQTT publish or NATS message); owned by the receive task,
/// never blocks.
pub(super) struct Router {
    pub(super) replies: Box<dyn Refusals>,
    pub(super) jobs: SyncSender<Job>,
    pub(super) capacity: usize,
    pub(super) inbox: Arc<Inbox>,
    /// `policy-topic`: subscribe to the config topic and hand its documents to the inbox.
    pub(super) policy_topic: bool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) prefix: String,
    pub(super) cluster: String,
    pub(super) node: String,
    pub(super) broker: String,
    /// Per-agent login token buckets (only this task uses them: the lock is uncontended).
    pub(super) limiter: Mutex<LoginLimiter>,
}

impl Router {
    fn topics(&self) -> Option<Topics<'_>> {
        Topics::new(&self.prefix, &self.cluster).ok()
    }

    pub(super) fn subscriptions(&self) -> Vec<SubscribeFilter> {
        let Some(t) = self.topics() else {
            return Vec::new();
        };
        [t.shared_logins_filter(), t.answers_filter(&self.node)]
            .into_iter()
            .chain(self.policy_topic.then(|| t.config()))
            .filter_map(Result::ok)
            .map(|f| SubscribeFilter::new(f.as_str().to_owned(), QoS::AtLeastOnce))
            .collect()
    }

    pub(super) fn route_publish(&self, publish: &Publish) {
        self.route(&publish.topic, &publish.payload);
    }

    /// Routes `payload` received on MQTT `topic` (NATS subjects are converted back first).
    pub(super) fn route(&self, topic: &str, payload: &[u8]) {
        self.metrics.frame_received(payload.len());
        let Some(topics) = self.topics() else {
            return;
        };
        let inbound = match topics.parse(topic) {
            Ok(i) => i,
            Err(e) => {
                self.metrics.frame_rejected(FrameRejection::UnknownTopic);
                log::debug!(topic = topic, error:% = e; "message on an unknown topic dropped");
                return;
            }
        };
        let agent = match inbound {
            Inbound::Config if !self.policy_topic => {
                self.metrics.frame_rejected(FrameRejection::UnknownTopic);
                log::debug!("config topic message dropped: policy-topic is false");
                return;
            }
            Inbound::Config => {
                if payload.len() > ENVELOPE_MAX {
                    self.metrics.frame_rejected(FrameRejection::Oversize);
                    log::error!(bytes = payload.len(); "config topic document is larger than {ENVELOPE_MAX} bytes; ignored");
                    return;
                }
                self.inbox.put(payload.to_vec());
                return;
            }
            Inbound::Down { .. } => {
                self.metrics.frame_rejected(FrameRejection::UnknownTopic);
                return;
            }
            Inbound::Answer { node, .. } if node != self.node => {
                self.metrics.frame_rejected(FrameRejection::UnknownTopic);
                return;
            }
            Inbound::Login { agent } => {
                if self.rate_limited(agent, agent, &format!("agent {agent}")) {
                    return;
                }
                agent
            }
            Inbound::Answer { agent, .. } => agent,
        };
        if payload.len() > limits::UPLINK_FRAME_MAX {
            self.metrics.frame_rejected(FrameRejection::Oversize);
            self.refuse(
                agent,
                RejectCode::Malformed,
                format!(
                    "frame of {} bytes is larger than the largest uplink message ({} bytes)",
                    payload.len(),
                    limits::UPLINK_FRAME_MAX
                ),
            );
            return;
        }
        let job = match decode::<Uplink>(payload) {
            Ok(Uplink::Login(login)) => {
                self.metrics.login_received();
                if let Some(ek) = ek_limit_key(&login) {
                    let what = format!(
                        "the EK of agent {} (received as agent {agent})",
                        ek.trim_start_matches("ek/")
                    );
                    if self.rate_limited(agent, &ek, &what) {
                        return;
                    }
                }
                // Over the frame exactly as received: a Login rewritten on the way has
                // another transcript than the one its device computed.
                let transcript = match sign::transcript(&self.cluster, agent, payload) {
                    Ok(t) => t,
                    Err(e) => {
                        self.metrics.frame_rejected(FrameRejection::Malformed);
                        self.refuse(agent, RejectCode::Malformed, e.to_string());
                        return;
                    }
                };
                Job::Login {
                    agent: agent.to_owned(),
                    login: Box::new(login),
                    transcript,
                }
            }
            Ok(Uplink::Answer(answer)) => Job::Answer {
                agent: agent.to_owned(),
                answer: Box::new(answer),
            },
            Err(e @ DecodeError::Version { got, .. }) => {
                self.metrics.frame_rejected(FrameRejection::Malformed);
                self.refuse_version(agent, got, &e);
                return;
            }
            Err(e) => {
                let why = match e {
                    DecodeError::TooLong { .. } => FrameRejection::Oversize,
                    _ => FrameRejection::Malformed,
                };
                self.metrics.frame_rejected(why);
                self.refuse(agent, e.reject_code(), format!("{e}"));
                return;
            }
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.metrics.frame_rejected(FrameRejection::Busy);
                self.metrics.proof_failed(RejectCode::Busy);
                let kind = match job {
                    Job::Login { .. } => "Login",
                    Job::Answer { .. } => "Answer",
                };
                self.refuse(
                    agent,
                    RejectCode::Busy,
                    format!(
                        "{kind} refused: {} jobs queued for the workers",
                        self.capacity
                    ),
                );
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Takes a login token of `key` (an agent id, or an EK's `ek/` key); when there is none,
    /// refuses `agent`'s Login as `server busy` naming `what` is limited and when to retry,
    /// counts it, and returns true.
    fn rate_limited(&self, agent: &str, key: &str, what: &str) -> bool {
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(key, Instant::now());
        let Err(wait) = verdict else {
            return false;
        };
        self.metrics.frame_rejected(FrameRejection::RateLimited);
        self.metrics.proof_failed(RejectCode::Busy);
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        // The agent is told too: `server busy` alone reads like an overloaded server, and
        // the wait is what it needs (it reveals nothing but the agent's own limit).
        let reason = format!("login rate limit for {what}: retry after {secs} s");
        self.send_refusal(
            agent,
            Rejected::with_detail(RejectCode::Busy, &reason),
            reason,
        );
        true
    }

    /// Refuses a frame of another protocol version: an agent of a version whose Rejected
    /// frame we can still write ([`LEGACY_VERSIONS`](ekattest_protocol::msg::LEGACY_VERSIONS))
    /// gets `unsupported protocol version` in its own version, so it logs why; others get
    /// the current version's frame.
    fn refuse_version(&self, agent: &str, got: u8, e: &DecodeError) {
        let reason = format!(
            "{e}: upgrade ekattest-agent on this device to wire version {}",
            ekattest_protocol::msg::VERSION
        );
        let mut buf = [0u8; limits::REJECTED_FRAME_MAX];
        let rejected = Rejected::new(RejectCode::UnsupportedVersion);
        let Ok(frame) = encode_legacy_rejection(got, &rejected, &mut buf) else {
            self.refuse(agent, RejectCode::UnsupportedVersion, reason);
            return;
        };
        log_rejection(
            agent,
            &Rejection {
                code: RejectCode::UnsupportedVersion,
                reason,
            },
        );
        self.metrics.proof_failed(RejectCode::UnsupportedVersion);
        let topic = Topics::new(&self.prefix, &self.cluster).and_then(|t| t.down(agent));
        if let Ok(topic) = topic {
            let len = frame.len();
            if self
                .replies
                .try_send(topic.as_str(), frame.to_vec())
                .is_ok()
            {
                self.metrics.frame_published(len);
            }
        }
    }

    /// Logs a refusal and tells the agent without waiting (a full client queue drops it).
    fn refuse(&self, agent: &str, code: RejectCode, reason: String) {
        self.send_refusal(agent, Rejected::new(code), reason);
    }

    /// Logs `reason` and sends `rejected` to the agent without waiting.
    fn send_refusal(&self, agent: &str, rejected: Rejected, reason: String) {
        let code = rejected.code;
        log_rejection(agent, &Rejection { code, reason });
        let msg = Downlink::Result(Outcome::Rejected(rejected));
        match downlink_frame(&self.prefix, &self.cluster, agent, &msg) {
            Ok((topic, frame)) => {
                let len = frame.len();
                if let Err(e) = self.replies.try_send(&topic, frame) {
                    log::debug!(agentId = agent, error:% = e; "rejection not sent: client queue full");
                } else {
                    self.metrics.frame_published(len);
                }
            }
            Err(e) => {
                log::error!(agentId = agent, error = e.as_str(); "cannot build the downlink frame")
            }
        }
    }
}

/// The rate-limit key of a Login's EK (`ek/` + its derived agent id), so one EK cannot log
/// in faster than one agent may, under however many agent ids; `None` if the EK public area
/// does not parse (the worker rejects the Login).
fn ek_limit_key(login: &Login) -> Option<String> {
    let public = Public::decode(&login.ek_public).ok()?;
    let hash = public.key.public_hash().ok()?;
    Some(format!("ek/{}", default_agent_id(&hash)))
}

/// Drives the MQTT event loop until SIGTERM/SIGINT; returns it for the final drain.
pub(super) async fn drive(
    router: Router,
    client: AsyncClient,
    mut eventloop: EventLoop,
) -> EventLoop {
    let mut delay = RECONNECT_MIN;
    let mut connected = false;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return eventloop,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    delay = RECONNECT_MIN;
                    connected = true;
                    router.metrics.set_broker_connected(true);
                    let filters = router.subscriptions();
                    log::info!(broker = router.broker.as_str(); "connected to broker");
                    if let Err(e) = client.try_subscribe_many(filters) {
                        log::error!(error:% = e; "cannot subscribe");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused = ack.return_codes.iter().filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)).count();
                    if refused > 0 {
                        log::error!(refused = refused; "the broker refused a subscription: check its ACL for this server's user");
                    } else {
                        log::debug!(filters = ack.return_codes.len(); "subscribed");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => router.route_publish(&publish),
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        log::warn!(error:% = e; "broker connection lost; reconnecting (sessions are kept)");
                    } else {
                        let error = e.to_string();
                        match ekattest_protocol::hardening::plaintext_to_tls_hint(router.broker.starts_with("mqtts://"), &error) {
                            Some(hint) => log::warn!(error = error.as_str(), hint = hint, retryInMs = delay.as_millis(); "cannot connect to broker; retrying"),
                            None => log::warn!(error = error.as_str(), retryInMs = delay.as_millis(); "cannot connect to broker; retrying"),
                        }
                    }
                    connected = false;
                    router.metrics.set_broker_connected(false);
                    tokio::select! {
                        () = &mut shutdown => return eventloop,
                        () = tokio::time::sleep(bus::jittered(delay)) => {}
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        }
    }
}

/// Lets queued replies reach the broker, then disconnects.
pub(super) async fn drain(client: &AsyncClient, mut eventloop: EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Resolves on SIGTERM or SIGINT.
pub(super) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests;
