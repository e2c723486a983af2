//! The daemon's reactions to Downlink messages: the Challenge (ActivateCredential and the
//! Answer with its proof of possession), a Rejected Result, an Accepted Result (verified
//! before anything is written), and everything unexpected (logged and ignored).
//!
//! Nothing here panics on a frame, and nothing is written unless the Result verified. A
//! Result that does not verify, or a Challenge naming an unusable node, is logged and
//! ignored: the attestation in flight keeps waiting for the server's own message until the
//! response timeout, so a forged message cannot cancel it (an unsigned Rejected can: the
//! protocol does not sign rejections).

use std::time::{Duration, Instant};

use ekattest_protocol::msg::{Accepted, Challenge, Downlink, Outcome, SessionId, Uplink};
use ekattest_protocol::{ErrorChain, decode};

use super::identity::{self, HeldKey, Signer, TrustBundle};
use super::{DaemonError, End, Phase, Runner, unix_now};
use crate::{attest, ops};
use ekattest_protocol::sign::Transcript;

impl Runner<'_> {
    pub(super) fn on_downlink(
        &mut self,
        session: &mut super::mqtt::Session,
        phase: Phase,
        payload: &[u8],
    ) -> Result<Phase, End> {
        let msg = match decode::<Downlink>(payload) {
            Ok(m) => m,
            Err(e) => {
                self.ignored(&format!(
                    "ignoring a message on {} that is not a Downlink: {e}",
                    self.down_topic
                ));
                return Ok(phase);
            }
        };
        match (phase, msg) {
            (
                Phase::AwaitChallenge {
                    key,
                    spki,
                    transcript,
                    deadline,
                },
                Downlink::Challenge(challenge),
            ) => {
                // Checked before the TPM is touched: a forged, replayed or relayed Challenge
                // is ignored, and the server's own Challenge may still come.
                let checked = self
                    .topics
                    .answer(&challenge.node, &self.agent)
                    .map_err(|e| {
                        format!(
                            "ignoring a Challenge naming an unusable server node {:?}: {e}",
                            challenge.node.as_str()
                        )
                    })
                    .and_then(|_| {
                        self.challenge_signer(&challenge, &transcript)
                            .map_err(|e| format!("ignoring a Challenge: {e}"))
                    });
                match checked {
                    Ok(signer) => {
                        Ok(self.on_challenge(session, key, spki, transcript, signer, &challenge))
                    }
                    Err(why) => {
                        self.ignored(&why);
                        Ok(Phase::AwaitChallenge {
                            key,
                            spki,
                            transcript,
                            deadline,
                        })
                    }
                }
            }
            (
                Phase::AwaitChallenge { .. } | Phase::AwaitResult { .. },
                Downlink::Result(Outcome::Rejected(r)),
            ) => {
                log::error!("attestation rejected: {}", r.message);
                self.failed(r.message.to_string());
                if self.opts.once {
                    return Err(End::Fatal(DaemonError::Rejected(r.message.to_string())));
                }
                Ok(Phase::Idle)
            }
            (
                Phase::AwaitResult {
                    key,
                    spki,
                    transcript,
                    signer,
                    session,
                    deadline,
                },
                Downlink::Result(Outcome::Accepted(accepted)),
            ) => match self.on_accepted(&key, &spki, &signer, &session, &transcript, &accepted) {
                // Not verified: logged; keep waiting for the server's own Result until the
                // response timeout (a forged Result must not cancel a good attestation).
                Ok(false) => Ok(Phase::AwaitResult {
                    key,
                    spki,
                    transcript,
                    signer,
                    session,
                    deadline,
                }),
                Ok(true) => Ok(Phase::Idle),
                Err(end) => Err(end),
            },
            (phase, msg) => {
                self.ignored(&format!(
                    "ignoring an unexpected {} message while waiting for {}",
                    msg.kind(),
                    phase.waiting_for()
                ));
                Ok(phase)
            }
        }
    }

    /// The signer of `challenge`, checked: its certificate (carried, or the one this agent
    /// holds when the Challenge leaves it out) chains to the trust bundle with the signer
    /// usage, its signature covers the Challenge, and the Challenge names `own`, the
    /// transcript of this agent's Login.
    fn challenge_signer(
        &mut self,
        challenge: &Challenge,
        own: &Transcript,
    ) -> Result<Box<Signer>, identity::IdentityError> {
        let now = unix_now();
        let signer = if challenge.signer.is_empty() {
            match (&self.signer, self.bundle.single_anchor()) {
                (Some(held), _) => held.clone(),
                (None, Some(anchor)) => self.bundle.signer(anchor, now)?,
                (None, None) => {
                    return Err(identity::IdentityError::Signer(
                        "the Challenge carries no signer certificate and this agent holds none"
                            .to_owned(),
                    ));
                }
            }
        } else {
            self.bundle.signer(&challenge.signer, now)?
        };
        signer.verify_challenge(&self.agent, challenge, own, now)?;
        self.signer = Some(signer.clone());
        Ok(Box::new(signer))
    }

    fn on_challenge(
        &mut self,
        session: &mut super::mqtt::Session,
        key: HeldKey,
        spki: Vec<u8>,
        transcript: Transcript,
        signer: Box<Signer>,
        challenge: &Challenge,
    ) -> Phase {
        log::debug!(
            "challenge for session {} from node {}",
            challenge.session,
            challenge.node
        );
        let d = &self.device;
        let answer = ops::open(&self.config.tpm)
            .map_err(|e| ErrorChain(&e).to_string())
            .and_then(|mut tpm| {
                attest::answer(
                    &mut tpm,
                    &d.ek,
                    &d.ak_opts,
                    challenge,
                    &transcript,
                    Some(key.pop_key()),
                )
                .map_err(|e| ErrorChain(&e).to_string())
            });
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let why = format!(
                    "cannot answer the challenge: {e} (verify {} is accessible to the agent)",
                    self.config.tpm
                );
                log::error!("{why}");
                self.failed(why);
                return Phase::Idle;
            }
        };
        let topic = match self.topics.answer(&challenge.node, &self.agent) {
            Ok(t) => t,
            Err(e) => {
                // Not reached: on_downlink checked the node.
                let why = format!("the challenge names an unusable server node: {e}");
                log::error!("{why}");
                self.failed(why);
                return Phase::Idle;
            }
        };
        if let Err(End::Transient(why) | End::Refused(why)) = self
            .publish(session, &topic, &Uplink::Answer(answer))
            .map(drop)
        {
            log::warn!("{why}");
            self.failed(why);
            return Phase::Idle;
        }
        self.last_problem = format!("no Result for the Answer published on {topic}");
        Phase::AwaitResult {
            key,
            spki,
            transcript,
            signer,
            session: challenge.session,
            deadline: Instant::now() + self.config.response_timeout,
        }
    }

    /// Verifies and stores an Accepted Result: `Ok(true)` when the identity was written,
    /// `Ok(false)` when the Result was refused (logged, nothing written).
    fn on_accepted(
        &mut self,
        key: &HeldKey,
        spki: &[u8],
        signer: &Signer,
        session: &SessionId,
        transcript: &Transcript,
        accepted: &Accepted,
    ) -> Result<bool, End> {
        match TrustBundle::load(&self.config.trust_bundle) {
            Ok(b) => self.bundle = b,
            Err(e) => log::warn!("keeping the trust bundle read earlier: {e}"),
        }
        let now = unix_now();
        let verified = identity::verify_result(
            signer,
            &self.agent,
            session,
            transcript,
            accepted,
            spki,
            now,
        )
        .and_then(|v| {
            let key_pem = key.key_pem()?;
            identity::write_identity(
                &self.config.data_dir,
                &v.svid,
                &v.chain,
                &key_pem,
                self.bundle.pem(),
            )
            .map(|()| v)
        });
        let v = match verified {
            Ok(v) => v,
            Err(e) => {
                let why = format!("not accepting the server's Result: {e}");
                // The server counted a success (it cannot know); count the refusal here, once
                // per attempt, so dashboards show both sides. Before the log line, so the
                // textfile is current when the line appears.
                self.count_failure();
                log::error!("{why}; still waiting for a Result that verifies");
                // Reported if no good Result comes (`--once` timeout, response timeout).
                self.last_problem = why;
                return Ok(false);
            }
        };
        // The textfile first, as for a refusal: it is current when the line appears.
        self.metrics.record(true);
        self.metrics.svid_expiry = Some(v.not_after);
        self.textfile.publish(&self.metrics);
        log::info!(
            agentId = self.agent.as_str(), spiffeId = v.spiffe_id.as_str(),
            svidNotAfter = v.not_after;
            "Connected to server"
        );
        self.login_backoff.reset();
        let renew_in = renew_in(v.not_before, v.not_after, now, self.config.renew_before);
        self.next_login = Instant::now() + Duration::from_secs(renew_in.unsigned_abs());
        log::debug!("re-attesting in {renew_in} s");
        if self.opts.once {
            return Err(End::Done);
        }
        Ok(true)
    }

    /// Logs a message the daemon ignores: the first ten, then each power of two, so a flood
    /// from the broker cannot fill the log.
    pub(super) fn ignored(&mut self, why: &str) {
        self.ignored = self.ignored.saturating_add(1);
        let n = self.ignored;
        if n <= 10 || n.is_power_of_two() {
            log::warn!("{why} ({n} messages ignored since start)");
        }
    }
}

/// Seconds from `now` (when the Result arrived) until the next attestation: when
/// `renew_before` of the SVID's lifetime is left. The lifetime is the one the server meant,
/// `notAfter - max(notBefore, now)`: the server backdates notBefore (60 s) against clock
/// skew, and that margin must not count, or a 1-minute SVID would renew every 21 s instead
/// of every 30 s with `renew-before: 0.5`. At least 1 s.
pub(super) fn renew_in(not_before: i64, not_after: i64, now: i64, renew_before: f64) -> i64 {
    let start = not_before.max(now);
    let lifetime = not_after.saturating_sub(start).max(0);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_precision_loss,
        reason = "seconds of a certificate lifetime, far below 2^52"
    )]
    let margin = (lifetime as f64 * renew_before) as i64;
    not_after.saturating_sub(margin).saturating_sub(now).max(1)
}

#[cfg(test)]
mod tests {
    use super::renew_in;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn backdated_not_before_does_not_count_in_the_lifetime() {
        // A 1-minute SVID as the server issues it: notBefore 60 s in the past.
        assert_eq!(renew_in(NOW - 60, NOW + 60, NOW, 0.5), 30);
        assert_eq!(renew_in(NOW - 60, NOW + 60, NOW, 1.0 / 3.0), 40);
        // A 24 h SVID.
        assert_eq!(renew_in(NOW - 60, NOW + 86_400, NOW, 0.5), 43_200);
    }

    #[test]
    fn a_result_received_late_renews_at_the_fraction_of_what_is_left() {
        // Not backdated, received 10 s after notBefore: 50 s left, half of them.
        assert_eq!(renew_in(NOW - 10, NOW + 50, NOW, 0.5), 25);
    }

    #[test]
    fn not_before_in_the_future_counts_from_not_before() {
        // The agent's clock runs behind: the lifetime starts at notBefore.
        assert_eq!(renew_in(NOW + 10, NOW + 70, NOW, 0.5), 40);
    }

    #[test]
    fn expired_or_absurd_validity_renews_in_one_second() {
        assert_eq!(renew_in(NOW - 120, NOW - 60, NOW, 0.5), 1);
        assert_eq!(renew_in(NOW, NOW, NOW, 0.5), 1);
        assert_eq!(renew_in(NOW + 100, NOW - 100, NOW, 0.5), 1);
    }
}
