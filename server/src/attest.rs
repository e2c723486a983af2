//! One attestation end to end, without I/O: a Login becomes a Challenge, an Answer becomes
//! the agent's verified identity (DESIGN.md section 2).
//!
//! [`Attestor`] owns this node's challenge sessions and is handed everything else: the policy
//! document in force, the time, and the randomness. The MQTT daemon decodes frames, calls
//! [`Attestor::login`] / [`Attestor::answer`] and publishes what they return; the fleet demo
//! and the end-to-end tests drive it in-process. It never logs and never panics on input.
//!
//! Checks run cheapest first, so a flood of garbage costs parsing, not signatures: policy
//! selection, the AK's public area, the EK's public area and template, then EK validation
//! (certificate chain or allow-list), the SPIFFE ID, and only then a session and
//! MakeCredential. Every rejection carries a closed [`RejectCode`] for the agent and the full
//! reason for the server's log; secrets never appear in either.

use std::error::Error as StdError;
use std::time::{Instant, SystemTime};

use ekattest_protocol::error::ErrorChain;
use ekattest_protocol::msg::{Accepted, Answer, Attribute, AttributeName, Challenge, Login};
use ekattest_protocol::public::Public;
use ekattest_protocol::{RejectCode, heapless};

use crate::ak;
use crate::config::Document;
use crate::credential::{self, Random};
use crate::ek::{self, Check, EkError, Evidence};
use crate::policy::PolicyError;
use crate::session::{SessionConfig, SessionError, SessionStore};

/// What a successful attestation proved: kept with the session between Challenge and Answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The policy that authorized the agent.
    pub policy: String,
    /// Which EK check passed.
    pub check: Check,
    /// The `tpm_ek` attributes, in the seed's order.
    pub attributes: Vec<(AttributeName, String)>,
    /// The SPIFFE ID rendered from the policy's template.
    pub spiffe_id: String,
    /// EK validation warnings (profile findings in warn mode, ignored chain certificates).
    pub warnings: Vec<String>,
}

impl Identity {
    /// The attributes in the seed's log format:
    /// `tpm_ek:tpm_ek.public_hash="..."` (the `agentAttestationAttributes` field).
    pub fn log_attributes(&self) -> Vec<String> {
        self.attributes
            .iter()
            .map(|(name, value)| format!("{}:{}={value:?}", name.origin(), name.as_str()))
            .collect()
    }

    /// The Result payload for the agent (no SVID or signature yet: the daemon adds those).
    ///
    /// # Errors
    /// A [`Rejection`] if a value exceeds the wire limits (checked at login, so a challenge
    /// is never issued for an identity that cannot be delivered).
    pub fn to_accepted(&self) -> Result<Accepted, Rejection> {
        let too_long = |what: &str| Rejection {
            code: RejectCode::Internal,
            reason: format!("{what} exceeds the protocol limit"),
        };
        let mut accepted = Accepted {
            spiffe_id: heapless::String::try_from(self.spiffe_id.as_str())
                .map_err(|_| too_long("SPIFFE ID"))?,
            attributes: heapless::Vec::new(),
            svid: heapless::Vec::new(),
            signature: heapless::Vec::new(),
        };
        for (name, value) in &self.attributes {
            let value =
                heapless::String::try_from(value.as_str()).map_err(|_| too_long(name.as_str()))?;
            accepted
                .attributes
                .push(Attribute { name: *name, value })
                .map_err(|_| too_long("attribute list"))?;
        }
        Ok(accepted)
    }
}

/// A refused Login or Answer: the code the agent sees, and the reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Sent to the agent; its `Display` is the operator string.
    pub code: RejectCode,
    /// The whole error chain, for the server log (never a secret).
    pub reason: String,
}

impl Rejection {
    fn from_error(code: RejectCode, e: &dyn StdError) -> Self {
        Self {
            code,
            reason: ErrorChain(e).to_string(),
        }
    }
}

/// The agent-facing code for an EK validation failure.
fn ek_code(e: &EkError) -> RejectCode {
    match e {
        EkError::NotTrusted { .. } => RejectCode::EkNotTrusted,
        EkError::Chain { .. } => RejectCode::EkChain,
        EkError::KeyMismatch { .. } => RejectCode::EkMismatch,
        EkError::NoKey | EkError::EkPublic(_) => RejectCode::Malformed,
        EkError::UnsupportedKey(_) => RejectCode::EkUnsupported,
        EkError::Config { .. } | EkError::TooManyCerts { .. } => RejectCode::Internal,
    }
}

/// This node's attestation state: its identity on the bus and its pending sessions.
#[derive(Debug)]
pub struct Attestor {
    node: heapless::String<{ ekattest_protocol::limits::NODE_ID_MAX }>,
    trust_domain: Option<String>,
    sessions: SessionStore<Box<Identity>>,
}

impl Attestor {
    /// A node named `node` (it appears in every Challenge so the answer comes back here),
    /// issuing SPIFFE IDs in `trust_domain` (`None`: paths only).
    ///
    /// # Errors
    /// A message if `node` is longer than the protocol allows.
    pub fn new(
        node: &str,
        trust_domain: Option<&str>,
        sessions: SessionConfig,
    ) -> Result<Self, String> {
        let node = heapless::String::try_from(node).map_err(|_| {
            format!(
                "node id {node:?} is longer than {} bytes",
                ekattest_protocol::limits::NODE_ID_MAX
            )
        })?;
        Ok(Self {
            node,
            trust_domain: trust_domain.map(str::to_owned),
            sessions: SessionStore::new(sessions),
        })
    }

    /// Pending challenge sessions.
    pub fn pending(&self) -> usize {
        self.sessions.len()
    }

    /// Drops expired sessions; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        self.sessions.sweep(now)
    }

    /// Handles a Login from `agent` (the id its topic carries): validates everything, opens a
    /// session and returns the Challenge to publish.
    ///
    /// # Errors
    /// A [`Rejection`] naming the first check that failed.
    pub fn login<R: Random + ?Sized>(
        &mut self,
        doc: &Document,
        agent: &str,
        login: &Login,
        now: Instant,
        wall: SystemTime,
        rng: &mut R,
    ) -> Result<(Challenge, &Identity), Rejection> {
        let policy = doc
            .select(&login.methods)
            .map_err(|e| Rejection::from_error(RejectCode::NoMatchingPolicy, &e))?;
        let tpm_ek = policy.tpm_ek().ok_or_else(|| Rejection {
            code: RejectCode::PolicyNotFound,
            reason: format!("policy {:?} has no tpm_ek attestor", policy.name),
        })?;
        let ak = ak::check_ak(&login.ak_public)
            .map_err(|e| Rejection::from_error(RejectCode::AkRejected, &e))?;
        let ek_public = Public::decode(&login.ek_public).map_err(|e| Rejection {
            code: RejectCode::Malformed,
            reason: format!("EK public area (TPM2B_PUBLIC) is malformed: {e}"),
        })?;
        credential::check_ek(&ek_public)
            .map_err(|e| Rejection::from_error(RejectCode::EkUnsupported, &e))?;
        let evidence = Evidence {
            ek_cert: login.ek_cert.as_deref(),
            ek_chain: &login.ek_chain,
            ek_public: Some(&login.ek_public),
        };
        let verdict = ek::validate(&tpm_ek.ek, &evidence, wall)
            .map_err(|e| Rejection::from_error(ek_code(&e), &e))?;
        let spiffe_id = policy
            .spiffe_id
            .render(&verdict.attributes, self.trust_domain.as_deref())
            .map_err(|e| {
                let code = match e {
                    PolicyError::MissingAttribute { .. } | PolicyError::EmptyAttribute { .. } => {
                        RejectCode::TemplateAttribute
                    }
                    _ => RejectCode::Internal,
                };
                Rejection::from_error(code, &e)
            })?;
        let attributes = verdict
            .attributes
            .iter()
            .filter_map(|(short, value)| {
                AttributeName::from_name(&format!("tpm_ek.{short}"))
                    .map(|name| (name, value.to_owned()))
            })
            .collect();
        let identity = Box::new(Identity {
            policy: policy.name.clone(),
            check: verdict.passed,
            attributes,
            spiffe_id,
            warnings: verdict.warnings,
        });
        identity.to_accepted()?;

        let (session, secret) = self
            .sessions
            .begin(agent, identity, now, rng)
            .map_err(|e| {
                let code = match e {
                    SessionError::Busy { .. } => RejectCode::Busy,
                    SessionError::AgentIdTooLong { .. } => RejectCode::Malformed,
                    _ => RejectCode::Internal,
                };
                Rejection::from_error(code, &e)
            })?;
        let made = credential::make_credential(&ek_public, &ak.name, secret.as_bytes(), rng);
        let cred = match made {
            Ok(c) => c,
            Err(e) => {
                self.sessions.cancel(&session);
                return Err(Rejection::from_error(RejectCode::Internal, &e));
            }
        };
        let too_long = |what: &str| Rejection {
            code: RejectCode::Internal,
            reason: format!("{what} exceeds the protocol limit"),
        };
        let challenge = Challenge {
            session,
            node: self.node.clone(),
            credential_blob: heapless::Vec::from_slice(&cred.blob)
                .map_err(|_| too_long("credential blob"))?,
            encrypted_secret: heapless::Vec::from_slice(&cred.secret)
                .map_err(|_| too_long("encrypted secret"))?,
            expires_in: u32::try_from(self.sessions.config().ttl.as_secs()).unwrap_or(u32::MAX),
        };
        let identity = self.sessions.peek(&session).ok_or_else(|| Rejection {
            code: RejectCode::Internal,
            reason: "session vanished right after it was created".to_owned(),
        })?;
        Ok((challenge, identity))
    }

    /// Handles an Answer from `agent`: takes the session (single use, right or wrong),
    /// compares the secret in constant time, and returns the identity proven.
    ///
    /// # Errors
    /// [`RejectCode::UnknownSession`] for an unknown, expired, already answered or other
    /// agent's session; [`RejectCode::ChallengeFailed`] for a wrong secret (the log reason is
    /// the seed's `challenge response secret does not match`).
    pub fn answer(
        &mut self,
        agent: &str,
        answer: &Answer,
        now: Instant,
    ) -> Result<Identity, Rejection> {
        match self.sessions.answer(&answer.session, &answer.secret, now) {
            Ok((owner, identity)) if owner.as_str() == agent => Ok(*identity),
            Ok((owner, _)) => Err(Rejection {
                code: RejectCode::UnknownSession,
                reason: format!(
                    "unknown session ID: session {} belongs to agent {owner}, answered by {agent}",
                    answer.session
                ),
            }),
            Err(SessionError::WrongSecret(id, owner)) if owner.as_str() != agent => {
                Err(Rejection {
                    code: RejectCode::UnknownSession,
                    reason: format!(
                        "unknown session ID: session {id} belongs to agent {owner}, answered by {agent}"
                    ),
                })
            }
            Err(e @ SessionError::WrongSecret(..)) => {
                Err(Rejection::from_error(RejectCode::ChallengeFailed, &e))
            }
            Err(e @ SessionError::Unknown(_)) => {
                Err(Rejection::from_error(RejectCode::UnknownSession, &e))
            }
            Err(e) => Err(Rejection::from_error(RejectCode::Internal, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ekattest_protocol::msg::Method;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::credential::{FixedRandom, SystemRandom};

    const VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/testdata/make-credential"
    );

    fn read(name: &str) -> Vec<u8> {
        let path = format!("{VECTORS}/{name}");
        std::fs::read(&path).unwrap_or_else(|e| panic!("test data {path} missing: {e}"))
    }

    /// An allow-list policy trusting the rsa2048 vector's EK.
    fn doc() -> Document {
        let hash = hex::encode(Sha256::digest(read("rsa2048/ek.spki.der")));
        let yaml = format!(
            "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
             requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes: [\"{hash}\"]\n"
        );
        Document::parse(yaml.as_bytes()).unwrap()
    }

    fn login() -> Login {
        Login {
            methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
            ek_public: heapless::Vec::from_slice(&read("rsa2048/ek.tpm2b_public")).unwrap(),
            ek_cert: None,
            ek_chain: heapless::Vec::new(),
            ak_public: heapless::Vec::from_slice(&read("ak.tpm2b_public")).unwrap(),
            svid_key: None,
        }
    }

    fn attestor() -> Attestor {
        Attestor::new("node-1", Some("example.org"), SessionConfig::default()).unwrap()
    }

    /// The vector's fixed inputs in the order login draws them: session secret, session id,
    /// MakeCredential seed, OAEP seed.
    fn vector_random() -> FixedRandom {
        FixedRandom::new([
            read("secret.bin"),
            vec![0x5a; 16],
            read("rsa2048/seed.bin"),
            read("rsa2048/oaep_seed.bin"),
        ])
    }

    #[test]
    fn login_issues_the_known_answer_challenge_and_answer_proves_identity() {
        let mut a = attestor();
        let now = Instant::now();
        let (challenge, identity) = a
            .login(
                &doc(),
                "ek-1",
                &login(),
                now,
                SystemTime::now(),
                &mut vector_random(),
            )
            .unwrap();
        assert_eq!(identity.check, Check::AllowList);
        let hash = hex::encode(Sha256::digest(read("rsa2048/ek.spki.der")));
        assert_eq!(
            identity.spiffe_id,
            format!("spiffe://example.org/agents/tpm/{hash}")
        );
        assert_eq!(identity.attributes, [(AttributeName::PublicHash, hash)]);
        // Byte for byte the credential tpm2-tools and swtpm agree on.
        assert_eq!(
            challenge.credential_blob.as_slice(),
            read("rsa2048/expected_credential_blob.tpm2b_id_object")
        );
        assert_eq!(
            challenge.encrypted_secret.as_slice(),
            read("rsa2048/expected_secret.tpm2b_encrypted_secret")
        );
        assert_eq!(
            (challenge.node.as_str(), challenge.expires_in),
            ("node-1", 300)
        );

        let answer = Answer {
            session: challenge.session,
            secret: heapless::Vec::from_slice(&read("secret.bin")).unwrap(),
            pop: None,
        };
        let identity = a.answer("ek-1", &answer, now).unwrap();
        assert_eq!(identity.policy, "p");
        let replay = a.answer("ek-1", &answer, now).unwrap_err();
        assert_eq!(replay.code, RejectCode::UnknownSession);
    }

    /// Logs `agent` in (randomness from `rng`) and returns the Answer carrying `secret`.
    fn challenged<R: Random>(a: &mut Attestor, agent: &str, rng: &mut R, secret: &[u8]) -> Answer {
        let now = Instant::now();
        let (challenge, _) = a
            .login(&doc(), agent, &login(), now, SystemTime::now(), rng)
            .unwrap();
        Answer {
            session: challenge.session,
            secret: heapless::Vec::from_slice(secret).unwrap(),
            pop: None,
        }
    }

    #[test]
    fn wrong_secret_wrong_agent_and_expiry_are_rejected() {
        let mut a = attestor();
        let now = Instant::now();
        let answer = challenged(&mut a, "ek-1", &mut SystemRandom, &[0; 32]);
        let r = a.answer("ek-1", &answer, now).unwrap_err();
        assert_eq!(r.code, RejectCode::ChallengeFailed);
        assert_eq!(r.reason, "challenge response secret does not match");

        // Expired: even the right secret (from the vector's fixed randomness) is too late.
        let right = read("secret.bin");
        let answer = challenged(&mut a, "ek-1", &mut vector_random(), &right);
        let r = a
            .answer("ek-1", &answer, now + Duration::from_secs(301))
            .unwrap_err();
        assert_eq!(r.code, RejectCode::UnknownSession);
        assert_eq!(a.pending(), 0);

        // The right answer published under another agent's topic consumes the session and
        // fails: a session only ever proves the agent that logged in.
        let answer = challenged(&mut a, "ek-1", &mut vector_random(), &right);
        let r = a.answer("ek-2", &answer, now).unwrap_err();
        assert_eq!(r.code, RejectCode::UnknownSession);
        assert!(r.reason.contains("belongs to agent ek-1"), "{}", r.reason);
        assert_eq!(a.pending(), 0);

        // With a wrong secret too: another agent learns nothing about the session.
        let answer = challenged(&mut a, "ek-1", &mut SystemRandom, &[0; 32]);
        let r = a.answer("ek-2", &answer, now).unwrap_err();
        assert_eq!(r.code, RejectCode::UnknownSession);
        assert_eq!(a.pending(), 0);
    }

    #[test]
    fn cheap_checks_reject_before_any_session() {
        let mut a = attestor();
        let now = Instant::now();
        let mut no_methods = login();
        no_methods.methods.clear();
        let r = a
            .login(
                &doc(),
                "ek-1",
                &no_methods,
                now,
                SystemTime::now(),
                &mut SystemRandom,
            )
            .unwrap_err();
        assert_eq!(r.code, RejectCode::NoMatchingPolicy);
        assert_eq!(
            r.reason,
            "no cluster policy authorizes the provided attestors"
        );

        let mut bad_ak = login();
        bad_ak.ak_public = bad_ak.ek_public.clone();
        let r = a
            .login(
                &doc(),
                "ek-1",
                &bad_ak,
                now,
                SystemTime::now(),
                &mut SystemRandom,
            )
            .unwrap_err();
        assert_eq!(r.code, RejectCode::AkRejected);

        let mut other_ek = login();
        other_ek.ek_public = heapless::Vec::from_slice(&read("p256/ek.tpm2b_public")).unwrap();
        let r = a
            .login(
                &doc(),
                "ek-1",
                &other_ek,
                now,
                SystemTime::now(),
                &mut SystemRandom,
            )
            .unwrap_err();
        assert_eq!(r.code, RejectCode::EkNotTrusted);
        assert_eq!(
            r.code.to_string(),
            "EK did not pass any configured validation check"
        );

        let mut garbage = login();
        garbage.ek_public.truncate(10);
        let r = a
            .login(
                &doc(),
                "ek-1",
                &garbage,
                now,
                SystemTime::now(),
                &mut SystemRandom,
            )
            .unwrap_err();
        assert_eq!(r.code, RejectCode::Malformed);
        assert_eq!(a.pending(), 0, "no rejected login leaves a session");
    }
}
