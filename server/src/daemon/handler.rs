//! What a worker does with one decoded Login or Answer: call the [`Attestor`], publish the
//! Challenge or Result, and write the seed's log lines and the metrics.
//!
//! Runs on the worker threads, never on the MQTT event loop. The [`Attestor`] sits behind a
//! `std::sync::Mutex` held only for one `login` / `answer` call; SVID issuance and signing
//! run outside it. The server never waits on an agent: publishing only queues the frame for
//! the MQTT client. Log lines, in the seed's order per agent: `Login started with
//! multi-attestation support`, `Authorization received and verified`, `Connected to agent`;
//! rejections at warn with the seed's string. Never logs a secret.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ekattest_protocol::msg::{Answer, Downlink, Login, Outcome, Rejected};
use ekattest_protocol::sign::Transcript;
use ekattest_protocol::topic::Topics;
use ekattest_protocol::{RejectCode, encode, limits};

use super::metrics::{Metrics, reason_label};
use super::reload::PolicyState;
use crate::attest::{self, Attestor, Identity, Rejection};
use crate::credential::SystemRandom;
use crate::registry::{self, Event, WriterHandle};
use crate::svid::Authority;

/// Where a worker's frames go: the MQTT client in the daemon, a recorder in tests.
pub trait Outbox: Send + Sync {
    /// Queues `frame` for `topic` (QoS 1, not retained).
    ///
    /// # Errors
    /// A message if the frame could not be queued (the client is shutting down).
    fn send(&self, topic: &str, frame: Vec<u8>) -> Result<(), String>;
}

/// One unit of work for a worker.
#[derive(Debug)]
pub enum Job {
    /// A decoded Login from `agent`.
    Login {
        /// The agent id from the topic (validated).
        agent: String,
        /// The message.
        login: Box<Login>,
        /// The Login transcript over the frame as received.
        transcript: Transcript,
    },
    /// A decoded Answer from `agent`.
    Answer {
        /// The agent id from the topic (validated).
        agent: String,
        /// The message.
        answer: Box<Answer>,
    },
}

/// Everything the workers share.
pub struct Handler {
    /// This node's sessions.
    pub attestor: Attestor,
    /// The SVID CA.
    pub authority: Authority,
    /// The policy document in force.
    pub policy: Arc<PolicyState>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Topic prefix.
    pub prefix: String,
    /// Cluster id.
    pub cluster: String,
    /// SVID validity.
    pub svid_ttl: Duration,
    /// Where frames go.
    pub outbox: Box<dyn Outbox>,
    /// The registry's writer (`registry: none`: `None`): every outcome is queued there,
    /// never waited for.
    pub registry: Option<WriterHandle>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("prefix", &self.prefix)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// The log message of a rejection: the code's operator string, except that a wrong secret
/// is logged as the seed's `challenge response secret does not match`.
pub fn reject_message(code: RejectCode) -> &'static str {
    match code {
        RejectCode::ChallengeFailed => RejectCode::SecretMismatch.as_str(),
        other => other.as_str(),
    }
}

impl Handler {
    /// Processes one job to completion.
    pub fn handle(&self, job: Job) {
        match job {
            Job::Login {
                agent,
                login,
                transcript,
            } => self.login(&agent, &login, &transcript),
            Job::Answer { agent, answer } => self.answer(&agent, &answer),
        }
    }

    fn attestor(&self) -> &Attestor {
        &self.attestor
    }

    fn login(&self, agent: &str, login: &Login, transcript: &Transcript) {
        let started = Instant::now();
        let methods: Vec<&str> = login.methods.iter().map(|m| m.as_str()).collect();
        log::info!(
            providedMethods:serde = methods, agentId = agent;
            "Login started with multi-attestation support"
        );
        let Some(doc) = self.policy.current() else {
            let rejection = Rejection {
                code: RejectCode::PolicyNotFound,
                reason: "no AgentAttestation document is in force: set policy-files or run \
                         `ekattestctl config set cluster`"
                    .to_owned(),
            };
            self.record_rejection(agent, || attest::ek_hash_of(login), &rejection);
            self.reject(agent, &rejection);
            self.metrics.login_duration.observe(started.elapsed());
            return;
        };
        let outcome = {
            let attestor = self.attestor();
            let result = attestor
                .login(
                    &doc,
                    agent,
                    login,
                    transcript,
                    Instant::now(),
                    SystemTime::now(),
                    &mut SystemRandom,
                )
                .map(|(challenge, identity)| (challenge, identity.warnings.clone()));
            self.metrics.set_sessions_active(attestor.pending());
            result
        };
        let outcome = outcome.and_then(|(mut challenge, warnings)| {
            self.authority
                .sign_challenge(agent, login.signer_hint, &mut challenge)
                .map_err(|e| Rejection {
                    code: RejectCode::Internal,
                    reason: e.to_string(),
                })?;
            Ok((challenge, warnings))
        });
        match outcome {
            Ok((challenge, warnings)) => {
                for w in &warnings {
                    log::warn!(agentId = agent; "{w}");
                }
                let session = challenge.session.to_string();
                let expires_in = challenge.expires_in;
                if self.publish(agent, &Downlink::Challenge(challenge)) {
                    log::debug!(
                        agentId = agent, session = session.as_str(), expiresIn = expires_in;
                        "Challenge sent"
                    );
                }
            }
            Err(rejection) => {
                self.record_rejection(agent, || attest::ek_hash_of(login), &rejection);
                self.reject(agent, &rejection);
            }
        }
        self.metrics.login_duration.observe(started.elapsed());
    }

    fn answer(&self, agent: &str, answer: &Answer) {
        let started = Instant::now();
        let outcome = {
            let attestor = self.attestor();
            let result = attestor.answer(agent, answer, Instant::now());
            self.metrics.set_sessions_active(attestor.pending());
            result
        };
        let accepted = outcome.and_then(|identity| {
            identity
                .accepted(
                    &self.authority,
                    agent,
                    &answer.session,
                    SystemTime::now(),
                    self.svid_ttl,
                )
                .map(|accepted| (identity, accepted))
        });
        match accepted {
            Ok((identity, accepted)) => {
                self.record_acceptance(agent, &identity, &accepted.svid);
                log::info!(
                    agentAttestationAttributes:serde = identity.log_attributes(),
                    agentId = agent,
                    policy = identity.policy.as_str(),
                    spiffeId = identity.spiffe_id.as_str();
                    "Authorization received and verified"
                );
                self.metrics.proof_succeeded();
                if identity.svid_key.is_some() {
                    self.metrics.svid_issued(identity.svid_key_in_tpm);
                }
                if self.publish(agent, &Downlink::Result(Outcome::Accepted(accepted))) {
                    log::info!(
                        agentId = agent, spiffeId = identity.spiffe_id.as_str();
                        "Connected to agent"
                    );
                }
            }
            Err(rejection) => {
                self.record_rejection(agent, || None, &rejection);
                self.reject(agent, &rejection);
            }
        }
        self.metrics.answer_duration.observe(started.elapsed());
    }

    /// Queues an acceptance for the registry.
    fn record_acceptance(&self, agent: &str, identity: &Identity, svid: &[u8]) {
        let Some(registry) = &self.registry else {
            return;
        };
        registry.record(Event {
            at: registry::unix_seconds(SystemTime::now()),
            agent: agent.to_owned(),
            ek: Some(identity.ek_hash),
            outcome: registry::Outcome::Accepted(Box::new(registry::Accepted {
                spiffe_id: identity.spiffe_id.clone(),
                policy: identity.policy.clone(),
                attributes: identity
                    .attributes
                    .iter()
                    .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
                    .collect(),
                svid_serial: None,
                svid_not_after: None,
                svid_der: svid.to_vec(),
            })),
        });
    }

    /// Queues a refusal for the registry; `ek` is only called when there is one.
    fn record_rejection(
        &self,
        agent: &str,
        ek: impl FnOnce() -> Option<registry::EkHash>,
        rejection: &Rejection,
    ) {
        let Some(registry) = &self.registry else {
            return;
        };
        registry.record(Event {
            at: registry::unix_seconds(SystemTime::now()),
            agent: agent.to_owned(),
            ek: ek(),
            outcome: registry::Outcome::Rejected {
                code: reason_label(rejection.code).to_owned(),
                reason: rejection.reason.clone(),
            },
        });
    }

    /// Logs and counts a rejection and tells the agent.
    pub fn reject(&self, agent: &str, rejection: &Rejection) {
        log_rejection(agent, rejection);
        self.metrics.proof_failed(rejection.code);
        self.publish(
            agent,
            &Downlink::Result(Outcome::Rejected(Rejected::new(rejection.code))),
        );
    }

    /// Encodes `msg` and queues it on `agent`'s downlink topic; logs and returns `false` on
    /// failure.
    fn publish(&self, agent: &str, msg: &Downlink) -> bool {
        let (topic, frame) = match downlink_frame(&self.prefix, &self.cluster, agent, msg) {
            Ok(built) => built,
            Err(e) => {
                log::error!(agentId = agent, error = e.as_str(); "cannot build the downlink frame");
                return false;
            }
        };
        let len = frame.len();
        match self.outbox.send(&topic, frame) {
            Ok(()) => {
                self.metrics.frame_published(len);
                true
            }
            Err(e) => {
                log::error!(agentId = agent, error = e.as_str(); "cannot publish to the broker");
                false
            }
        }
    }
}

/// The warn line of a rejection: seed message, `agentId`, `code`, `error`.
pub fn log_rejection(agent: &str, rejection: &Rejection) {
    log::warn!(
        agentId = agent, code = reason_label(rejection.code), error = rejection.reason.as_str();
        "{}", reject_message(rejection.code)
    );
}

/// The downlink topic of `agent` and the encoded frame of `msg`.
///
/// # Errors
/// A message if the topic or frame cannot be built.
pub fn downlink_frame(
    prefix: &str,
    cluster: &str,
    agent: &str,
    msg: &Downlink,
) -> Result<(String, Vec<u8>), String> {
    let topic = Topics::new(prefix, cluster)
        .and_then(|t| t.down(agent))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; limits::FRAME_MAX];
    let frame = encode(msg, &mut buf).map_err(|e| e.to_string())?;
    Ok((topic.as_str().to_owned(), frame.to_vec()))
}

#[cfg(test)]
mod tests;
