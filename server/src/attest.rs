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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ekattest_protocol::error::ErrorChain;
use ekattest_protocol::limits::SVID_MAX;
use ekattest_protocol::msg::{
    Accepted, Answer, Attribute, AttributeName, Challenge, Login, SessionId,
};
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::topic::default_agent_id;
use ekattest_protocol::tpm::public::Public;
use ekattest_protocol::{RejectCode, heapless};

use crate::ak;
use crate::certify;
use crate::config::Document;
use crate::credential::{self, Random};
use crate::ek::{self, Check, EkError, Evidence};
use crate::registry::{Ban, BanList, EkHash};
use crate::session::{SessionConfig, SessionError, SessionStore};
use crate::spiffe::PolicyError;
use crate::svid::{self, Authority, SvidError};

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
    /// The Login's `svid_key` (DER SubjectPublicKeyInfo, checked to be P-256), if the agent
    /// asked for an X.509-SVID: the Answer must then prove possession of it.
    pub svid_key: Option<Vec<u8>>,
    /// Whether the `svid_key` is TPM-resident: the Login's `key_certify` passed
    /// [`certify::check`].
    pub svid_key_in_tpm: bool,
    /// The agent id the Login came from (its topic): only that agent may answer.
    pub agent: String,
    /// The Login transcript `T` (DESIGN.md section 2): the Answer's MAC and proof of
    /// possession, and the Result signature, are over it.
    pub transcript: Transcript,
    /// The EK's public hash (`tpm_ek.public_hash`): the registry's key.
    pub ek_hash: EkHash,
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

    /// The whole success path for the daemon: [`Identity::to_accepted`], an SVID from
    /// `authority` valid for `ttl` if the Login carried an `svid_key`, then
    /// [`Authority::sign_result`] over the identity's Login transcript, for `agent`'s Answer to
    /// `session`.
    ///
    /// # Errors
    /// A [`Rejection`] with [`RejectCode::Internal`] and the reason for the log.
    pub fn accepted(
        &self,
        authority: &Authority,
        agent: &str,
        session: &SessionId,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Accepted, Rejection> {
        let internal = |e: SvidError| Rejection {
            code: RejectCode::Internal,
            reason: e.to_string(),
        };
        let mut accepted = self.to_accepted()?;
        if let Some(key) = &self.svid_key {
            let der = authority
                .issue(key, &self.spiffe_id, now, ttl)
                .map_err(internal)?;
            accepted.svid = heapless::Vec::from_slice(&der).map_err(|_| {
                internal(SvidError::TooLarge {
                    len: der.len(),
                    max: SVID_MAX,
                })
            })?;
        }
        authority
            .sign_result(agent, session, &self.transcript, &mut accepted)
            .map_err(internal)?;
        Ok(accepted)
    }
}

/// The Login's EK public area, decoded and checked, and its public hash.
fn decode_ek(tpm2b: &[u8]) -> Result<(Public<'_>, EkHash), Rejection> {
    let ek_public = Public::decode(tpm2b).map_err(|e| Rejection {
        code: RejectCode::Malformed,
        reason: format!("EK public area (TPM2B_PUBLIC) is malformed: {e}"),
    })?;
    credential::check_ek(&ek_public)
        .map_err(|e| Rejection::from_error(RejectCode::EkUnsupported, &e))?;
    let ek_hash = ek_public.key.public_hash().map_err(|e| Rejection {
        code: RejectCode::EkUnsupported,
        reason: format!("EK public key has no SubjectPublicKeyInfo form: {e}"),
    })?;
    Ok((ek_public, ek_hash))
}

/// The refusal of a banned EK or agent id.
fn banned(ban: &Ban) -> Rejection {
    Rejection {
        code: RejectCode::Banned,
        reason: ban.refusal(),
    }
}

/// The public hash of a Login's EK, when its public area decodes: for the registry's record
/// of a refused Login (the accepted path has it in [`Identity::ek_hash`]).
pub fn ek_hash_of(login: &Login) -> Option<EkHash> {
    Public::decode(&login.ek_public)
        .ok()
        .and_then(|p| p.key.public_hash().ok())
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

/// The Answer proves possession of the Login's `svid_key`, if one was sent (a `pop` without
/// a key is ignored: there is nothing to prove), over the Login transcript and the MAC.
fn check_pop(identity: &Identity, answer: &Answer) -> Result<(), Rejection> {
    let Some(key) = &identity.svid_key else {
        return Ok(());
    };
    let Some(pop) = &answer.pop else {
        return Err(Rejection {
            code: RejectCode::ProofOfPossession,
            reason: format!(
                "proof of possession missing: the Login of session {} sent an svid_key but \
                 the Answer carries no pop",
                answer.session
            ),
        });
    };
    svid::verify_pop(key, &identity.transcript, &answer.session, &answer.mac, pop)
        .map_err(|e| Rejection::from_error(RejectCode::ProofOfPossession, &e))
}

/// This node's attestation state: its identity on the bus and its pending sessions.
///
/// Shared by reference between worker threads: only the session table is behind a lock,
/// held for a table operation (microseconds). EK validation and MakeCredential, the
/// expensive parts of a Login, run outside it, so workers attest in parallel.
#[derive(Debug)]
pub struct Attestor {
    node: heapless::String<{ ekattest_protocol::limits::NODE_ID_MAX }>,
    trust_domain: Option<String>,
    sessions: Mutex<SessionStore<Box<Identity>>>,
    agent_id_from_ek: bool,
    cluster: String,
    require_tpm_key: bool,
    bans: Arc<BanList>,
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
            sessions: Mutex::new(SessionStore::new(sessions)),
            agent_id_from_ek: false,
            cluster: String::new(),
            require_tpm_key: false,
            bans: Arc::new(BanList::new()),
        })
    }

    /// The bans this node honours (the registry's writer refreshes them): a banned EK or
    /// agent id is refused with [`RejectCode::Banned`] at Login, before any signature check,
    /// and at Answer. Empty for a bare `Attestor`.
    #[must_use]
    pub fn bans(mut self, bans: Arc<BanList>) -> Self {
        self.bans = bans;
        self
    }

    /// Requires (with `true`) that a Login's agent id be the one derived from its EK (`ek-` +
    /// 32 hex digits of `tpm_ek.public_hash`), so a captured Login replayed under invented
    /// agent ids is refused before any signature check or session. The daemon's
    /// `agent-id-from-ek` setting (default on); off for a bare `Attestor`.
    #[must_use]
    pub fn agent_id_from_ek(mut self, required: bool) -> Self {
        self.agent_id_from_ek = required;
        self
    }

    /// The cluster this node serves: a TPM-resident SVID key's certification must be made
    /// for it ([`sign::certify_qualifying_data`]). Empty for a bare `Attestor`.
    #[must_use]
    pub fn cluster(mut self, cluster: &str) -> Self {
        cluster.clone_into(&mut self.cluster);
        self
    }

    /// Requires (with `true`) that every Login asking for an SVID carry a TPM-resident key
    /// with its certification (`key_certify`): software keys are refused with
    /// [`RejectCode::KeyCertification`]. The daemon's `require-tpm-svid-key` (default off).
    #[must_use]
    pub fn require_tpm_key(mut self, required: bool) -> Self {
        self.require_tpm_key = required;
        self
    }

    /// This node's id, as named in its Challenges.
    #[must_use]
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The session table. A panic while it was held cannot leave it half-updated (every
    /// operation completes or does nothing), so a poisoned lock is simply taken over.
    fn sessions(&self) -> MutexGuard<'_, SessionStore<Box<Identity>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pending challenge sessions.
    pub fn pending(&self) -> usize {
        self.sessions().len()
    }

    /// Drops expired sessions; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        self.sessions().sweep(now)
    }

    /// Handles a Login from `agent` (the id its topic carries) whose frame has transcript
    /// `transcript` ([`sign::transcript`] over the frame as received): validates everything,
    /// opens a session (one per EK: it replaces a pending one of the same EK) and returns the
    /// Challenge to publish, unsigned (the daemon signs it,
    /// [`crate::svid::Authority::sign_challenge`]).
    ///
    /// # Errors
    /// A [`Rejection`] naming the first check that failed.
    #[allow(
        clippy::too_many_arguments,
        reason = "sans-IO: every input is passed in"
    )]
    pub fn login<R: Random + ?Sized>(
        &self,
        doc: &Document,
        agent: &str,
        login: &Login,
        transcript: &Transcript,
        now: Instant,
        wall: SystemTime,
        rng: &mut R,
    ) -> Result<(Challenge, Identity), Rejection> {
        // The ban of an agent id needs nothing decoded; the EK's, its public hash. Both come
        // before any signature check, session or policy work. A banned EK decodes (it was
        // hashed to be banned); an EK that does not decode is refused below, in the order
        // of the checks (policy, AK, SVID key, certify, EK, agent id), as before bans.
        if let Some(ban) = self.bans.check(agent, None) {
            return Err(banned(&ban));
        }
        let ek = decode_ek(&login.ek_public);
        if let Ok((_, ek_hash)) = &ek
            && let Some(ban) = self.bans.check(agent, Some(ek_hash))
        {
            return Err(banned(&ban));
        }
        let policy = doc
            .select(&login.methods)
            .map_err(|e| Rejection::from_error(RejectCode::NoMatchingPolicy, &e))?;
        let tpm_ek = policy.tpm_ek().ok_or_else(|| Rejection {
            code: RejectCode::PolicyNotFound,
            reason: format!("policy {:?} has no tpm_ek attestor", policy.name),
        })?;
        let ak = ak::check_ak(&login.ak_public)
            .map_err(|e| Rejection::from_error(RejectCode::AkRejected, &e))?;
        if let Some(key) = &login.svid_key {
            svid::check_svid_key(key)
                .map_err(|e| Rejection::from_error(RejectCode::ProofOfPossession, &e))?;
        }
        self.check_key_certify(agent, login)?;
        let (ek_public, ek_hash) = ek?;
        let derived = default_agent_id(&ek_hash);
        if self.agent_id_from_ek && agent != derived.as_str() {
            return Err(Rejection {
                code: RejectCode::AgentIdMismatch,
                reason: format!(
                    "agent id is not the one derived from the EK: the Login on agent {agent}'s \
                     topic carries the EK of agent {derived}; agents must use their default \
                     agent id (remove agent-id from agent.yaml) or the server must set \
                     agent-id-from-ek: false"
                ),
            });
        }
        let evidence = Evidence {
            ek_cert: login.ek_cert.as_deref(),
            ek_chain: &login.ek_chain,
            ek_public: Some(ek_public),
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
            svid_key: login.svid_key.as_ref().map(|k| k.to_vec()),
            svid_key_in_tpm: login.key_certify.is_some(),
            agent: agent.to_owned(),
            transcript: *transcript,
            ek_hash,
        });
        identity.to_accepted()?;
        let proven = (*identity).clone();

        // One pending session per EK, whatever agent id it comes under.
        let begun = self.sessions().begin(derived.as_str(), identity, now, rng);
        let (session, secret) = begun.map_err(|e| {
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
                self.sessions().cancel(&session);
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
            expires_in: u32::try_from(self.sessions().config().ttl.as_secs()).unwrap_or(u32::MAX),
            transcript: *transcript,
            signer: heapless::Vec::new(),
            signature: heapless::Vec::new(),
        };
        Ok((challenge, proven))
    }

    /// A `key_certify` must show the Login's `svid_key` is a TPM key certified by its AK for
    /// this Login ([`certify::check`]); with `require_tpm_key`, a Login asking for an SVID
    /// must carry one.
    fn check_key_certify(&self, agent: &str, login: &Login) -> Result<(), Rejection> {
        let Some(kc) = &login.key_certify else {
            if self.require_tpm_key && login.svid_key.is_some() {
                return Err(Rejection {
                    code: RejectCode::KeyCertification,
                    reason: "SVID key certification failed: this server requires the SVID key \
                             to live in the TPM (require-tpm-svid-key) and the Login carries a \
                             software key; set svid-key: tpm on the agent"
                        .to_owned(),
                });
            }
            return Ok(());
        };
        let qualifying = sign::certify_qualifying_data(&self.cluster, agent, &login.nonce)
            .map_err(|e| Rejection::from_error(RejectCode::Malformed, &e))?;
        certify::check(kc, &login.ak_public, login.svid_key.as_deref(), &qualifying)
            .map_err(|e| Rejection::from_error(RejectCode::KeyCertification, &e))
    }

    /// Handles an Answer from `agent`: takes the session (single use, right or wrong),
    /// recomputes the MAC over the session's Login transcript with its secret and compares in
    /// constant time, then, if the Login sent an `svid_key`, checks the Answer's proof of
    /// possession of it, and returns the identity proven.
    ///
    /// # Errors
    /// [`RejectCode::UnknownSession`] for an unknown, expired, already answered or other
    /// agent's session; [`RejectCode::ChallengeFailed`] for a wrong MAC (the log reason is
    /// the seed's `challenge response secret does not match`);
    /// [`RejectCode::ProofOfPossession`] for a missing or bad `pop` (the session is spent).
    pub fn answer(
        &self,
        agent: &str,
        answer: &Answer,
        now: Instant,
    ) -> Result<Identity, Rejection> {
        let node = self.node.as_str();
        let mut owner = None;
        let taken = self
            .sessions()
            .answer_with(&answer.session, now, |secret, identity| {
                owner = Some(identity.agent.clone());
                identity.agent == agent
                    && sign::answer_mac_matches(
                        secret,
                        &identity.transcript,
                        &answer.session,
                        node,
                        &answer.mac,
                    )
            });
        match (taken, owner) {
            (Ok((_, identity)), _) => {
                // A ban written between the Login and the Answer holds too.
                if let Some(ban) = self.bans.check(agent, Some(&identity.ek_hash)) {
                    return Err(banned(&ban));
                }
                check_pop(&identity, answer)?;
                Ok(*identity)
            }
            // Another agent's session: answered like an unknown one, so an agent learns
            // nothing about sessions that are not its own. The session is spent either way.
            (Err(SessionError::WrongSecret(id, _)), Some(owner)) if owner != agent => {
                Err(Rejection {
                    code: RejectCode::UnknownSession,
                    reason: format!(
                        "unknown session ID: session {id} belongs to agent {owner}, answered by \
                         {agent}"
                    ),
                })
            }
            (Err(SessionError::WrongSecret(id, _)), _) => Err(Rejection {
                code: RejectCode::ChallengeFailed,
                reason: format!(
                    "challenge response secret does not match: the MAC of agent {agent}'s \
                     Answer to session {id} does not verify over the session's Login \
                     transcript (another TPM opened the credential, the Login was rewritten \
                     on the way, or the Answer is forged)"
                ),
            }),
            (Err(e @ SessionError::Unknown(_)), _) => {
                Err(Rejection::from_error(RejectCode::UnknownSession, &e))
            }
            (Err(e), _) => Err(Rejection::from_error(RejectCode::Internal, &e)),
        }
    }
}

#[cfg(test)]
mod tests;
