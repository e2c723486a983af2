//! The device side of a load thread ([`super::Sim`]) for what the servers send: each
//! downlink on a device's topic (Challenge, Accepted or Rejected Result), the Challenge
//! checks (its transcript always, its signature on a sample), the software
//! ActivateCredential, MAC and proof of possession of the Answer, and the Answers a slow TPM
//! (`--slow-tpm`) holds back until their simulated ActivateCredential returns.
//!
//! Every field of a downlink is untrusted (the server's, or a corrupted frame's): nothing
//! here panics on one, and a frame for another thread's device (wildcard subscription) is
//! dropped unread.

use std::time::{Duration, Instant};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use ekattest_agent::attest::answer_with_secret;
use ekattest_protocol::msg::{Challenge, Downlink, Outcome, Uplink};
use ekattest_protocol::sign::Transcript;
use ekattest_protocol::topic::Inbound;
use ekattest_protocol::{ErrorChain, RejectCode, decode, sign};

use super::{Sim, State, encode_frame, publish_wire_bytes, unix_now};
use crate::error::{Error, Result};

/// What a device makes of a Challenge's transcript.
enum Named {
    /// The current attempt's Login.
    Current(Transcript),
    /// An earlier attempt's Login: stale, ignored.
    Earlier,
    /// No Login this device sent (the server received another frame than the one sent).
    Foreign,
}

impl Sim<'_> {
    /// How long this Answer's simulated ActivateCredential takes (`--slow-tpm`), if slowed.
    pub(super) fn tpm_delay(&mut self) -> Option<Duration> {
        let (delay, jitter) = self.spec.slow_tpm?;
        Some(crate::faults::tpm_proxy::pick_delay(
            delay,
            jitter,
            &mut self.tpm_rng,
        ))
    }

    /// Publishes the delayed Answers that are due and still belong to the device's current
    /// attempt (a retry or a reconnect since makes them stale: dropped).
    pub(super) fn send_due_answers(&mut self) {
        let now = Instant::now();
        let mut k = 0;
        while k < self.delayed.len() {
            if self.delayed[k].0 > now {
                k += 1;
                continue;
            }
            let (_, i, attempt, topic, frame) = self.delayed.swap_remove(k);
            let current = self
                .devs
                .get(i)
                .is_some_and(|d| d.attempts == attempt && d.state == State::WaitResult);
            if current {
                self.publish_frame(&topic, frame);
            }
        }
    }

    pub(super) fn on_publish(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        let Ok(Inbound::Down { agent }) = self.topics.parse(topic) else {
            return Ok(());
        };
        let Some(i) = self.local_device(agent) else {
            return Ok(()); // another thread's device (wildcard subscription)
        };
        self.result.wire_bytes += publish_wire_bytes(topic.len(), payload.len());
        let Ok(down) = decode::<Downlink>(payload) else {
            return self.failed_attempt(i, "undecodable downlink frame");
        };
        match (self.devs[i].state, down) {
            (State::WaitChallenge, Downlink::Challenge(c)) => {
                // Every field of the Challenge is the server's (or a corrupted frame's).
                let transcript = match self.named(i, &c) {
                    Named::Current(t) => t,
                    // An earlier attempt's Challenge (its session was replaced by this
                    // attempt's Login): the agent ignores it too.
                    Named::Earlier => return Ok(()),
                    Named::Foreign => {
                        return self.failed_attempt(
                            i,
                            "Challenge for a Login this device did not send (transcript differs)",
                        );
                    }
                };
                self.challenges_seen += 1;
                if self.sampled(self.challenges_seen) {
                    if let Err(why) = self.verify_challenge(agent, &c, &transcript) {
                        return self.failed_attempt(i, &why.to_string());
                    }
                    self.result.challenges_checked += 1;
                }
                let (topic, answer) = match self.answer(i, agent, &c, &transcript) {
                    Ok(a) => a,
                    Err(why) => return self.failed_attempt(i, &why.to_string()),
                };
                self.devs[i].state = State::WaitResult;
                self.devs[i].session = Some(c.session);
                match self.tpm_delay() {
                    // A slow TPM: the Answer goes out when its ActivateCredential would
                    // have returned (the server holds the session meanwhile).
                    Some(delay) => {
                        let frame = encode_frame(&answer)?;
                        let attempt = self.devs[i].attempts;
                        self.delayed
                            .push((Instant::now() + delay, i, attempt, topic, frame));
                        Ok(())
                    }
                    None => self.publish(&topic, &answer),
                }
            }
            (State::WaitResult, Downlink::Result(Outcome::Accepted(a))) => {
                let (Some(session), Some(transcript)) =
                    (self.devs[i].session, self.devs[i].transcript)
                else {
                    return Ok(());
                };
                if a.svid.is_empty() {
                    return self.failed_attempt(i, "Accepted without an X.509-SVID");
                }
                self.accepted_seen += 1;
                if self.sampled(self.accepted_seen) {
                    let bytes = match sign::result_signed_bytes(agent, &session, &transcript, &a) {
                        Ok(b) => b,
                        Err(e) => {
                            return self.failed_attempt(i, &format!("Result bytes: {e}"));
                        }
                    };
                    let key = UnparsedPublicKey::new(
                        &ECDSA_P256_SHA256_ASN1,
                        self.spec.signer_point.as_slice(),
                    );
                    if key.verify(&bytes, &a.signature).is_err() {
                        if self.spec.corrupt {
                            return self.failed_attempt(
                                i,
                                "Result signature does not verify with the server's signer",
                            );
                        }
                        // As the agent does: not for this session and Login (an earlier
                        // attempt's Result, signed over its own session and transcript) or
                        // forged; keep waiting, the attempt timeout logs in again if nothing
                        // better comes.
                        *self
                            .result
                            .reasons
                            .entry(
                                "Result not signed for the current session: ignored (an \
                                 earlier attempt's, or forged)"
                                    .to_owned(),
                            )
                            .or_default() += 1;
                        return Ok(());
                    }
                    self.result.signatures_checked += 1;
                }
                let tti = self.devs[i]
                    .started
                    .map(|s| s.elapsed())
                    .unwrap_or_default();
                self.result.time_to_identity.push(tti);
                self.result.attested += 1;
                self.devs[i].attested = true;
                self.finish(i);
                Ok(())
            }
            (State::WaitChallenge | State::WaitResult, Downlink::Result(Outcome::Rejected(r))) => {
                // The code's own text: a corrupted message field must not add reasons.
                *self.result.reasons.entry(r.code.to_string()).or_default() += 1;
                match r.code {
                    // The server shed load: the attempt's timeout logs in again later.
                    RejectCode::Busy => return Ok(()),
                    // The answer of an earlier attempt (after a retry, a reconnect or a
                    // lost frame) met a replaced or expired session: log in again now.
                    RejectCode::UnknownSession | RejectCode::SessionExpired => {
                        return self.login(i);
                    }
                    // A corrupted Login or Answer: whatever the server made of it.
                    _ if self.spec.corrupt => {
                        self.result.corrupt_retries += 1;
                        return self.login(i);
                    }
                    _ => {}
                }
                self.result.rejected += 1;
                self.finish(i);
                Ok(())
            }
            // A second identity for a device that has one: an earlier attempt's session
            // finished after a later one did (the server issued twice).
            (State::Done, Downlink::Result(Outcome::Accepted(_))) if self.devs[i].attested => {
                self.result.duplicates += 1;
                Ok(())
            }
            // Stale: a Challenge or Result of an earlier attempt.
            _ => Ok(()),
        }
    }

    /// Whether the `n`th (from 1) Challenge or Result gets its signature checked: all of
    /// them with `--corrupt`, else one in `verify_every` (none for 0).
    fn sampled(&self, n: usize) -> bool {
        let every = if self.spec.corrupt {
            1
        } else {
            self.spec.verify_every
        };
        every > 0 && n.saturating_sub(1).is_multiple_of(every)
    }

    /// Which of device `i`'s Logins `c` names.
    fn named(&self, i: usize, c: &Challenge) -> Named {
        let dev = &self.devs[i];
        match dev.transcript {
            Some(t) if t == c.transcript => Named::Current(t),
            _ if dev.earlier.contains(&c.transcript) => Named::Earlier,
            _ => Named::Foreign,
        }
    }

    /// The agent's check of a Challenge before its TPM is touched: the signer (the one the
    /// Login's hint named, or the certificate carried, chained to the trust bundle) signed
    /// this agent's Challenge, which names `own`.
    fn verify_challenge(&self, agent: &str, c: &Challenge, own: &Transcript) -> Result<()> {
        let now = unix_now();
        let carried;
        let signer = if c.signer.is_empty() {
            self.spec.signer.as_ref()
        } else {
            carried = self
                .spec
                .bundle
                .signer(&c.signer, now)
                .map_err(|e| Error::Device(ErrorChain(&e).to_string()))?;
            &carried
        };
        signer
            .verify_challenge(agent, c, own, now)
            .map_err(|e| Error::Device(ErrorChain(&e).to_string()))
    }

    /// Device `i`'s Answer to `c` (its Login's transcript `transcript`) and its topic; `Err`
    /// says why the Challenge cannot be answered (a damaged frame, a credential for another
    /// key).
    pub(super) fn answer(
        &self,
        i: usize,
        agent: &str,
        c: &Challenge,
        transcript: &Transcript,
    ) -> Result<(String, Uplink)> {
        let key = self.spec.keys.key(self.devs[i].key);
        let secret = key
            .ek
            .activate_credential(key.ak.name(), &c.credential_blob, &c.encrypted_secret)
            .map_err(|e| Error::Device(format!("ActivateCredential: {e}")))?;
        let answer = answer_with_secret(&secret, c, transcript, Some(self.svid_key.signing_key()))
            .map_err(|e| Error::Device(format!("Answer: {}", ErrorChain(&e))))?;
        let answer = Uplink::Answer(answer);
        let topic = self
            .topics
            .answer(c.node.as_str(), agent)
            .map_err(|e| Error::Device(format!("Challenge node id: {e}")))?;
        Ok((topic.as_str().to_owned(), answer))
    }
}
