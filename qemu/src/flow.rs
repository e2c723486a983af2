//! One device's attestation, in process: the agent library on a real (swtpm) TPM and the
//! server library, with every message encoded to a protocol frame and decoded on the other
//! side exactly as it would cross the broker. The MQTT transport comes later; everything
//! the device and the server compute here is the real thing: the Login transcript `T` on
//! both sides (each over the frame it sent or received), the signed Challenge the device
//! verifies against its trust bundle before its TPM opens the credential, the Answer's MAC,
//! and the signed Result.

use std::time::{Duration, Instant, SystemTime};

use ekattest_agent::attest::{self as agent_attest, AttestError};
use ekattest_agent::daemon::identity::TrustBundle;
use ekattest_agent::tpm::ak::{self as agent_ak, AkOptions};
use ekattest_agent::tpm::ek::{self as agent_ek, EkKind};
use ekattest_agent::tpm::{self, commands::Tpm};
use ekattest_protocol::limits::{FRAME_MAX, NONCE_LEN};
use ekattest_protocol::msg::{Downlink, Outcome, Uplink};
use ekattest_protocol::topic::default_agent_id;
use ekattest_protocol::{DecodeError, EncodeError, ErrorChain, RejectCode, decode, encode, sign};
use ekattest_server::attest::{Attestor, Identity, Rejection};
use ekattest_server::config::Document;
use ekattest_server::credential::SystemRandom;
use ekattest_server::session::SessionConfig;
use ekattest_server::svid::Authority;

/// The cluster id the in-process devices and server put in the Login transcript.
pub const CLUSTER: &str = "in-process";

/// Why a device could not run its side of the flow (distinct from the server rejecting it).
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The agent's TPM work failed.
    #[error("agent TPM operation failed: {0}")]
    Tpm(String),
    /// Building the Login or answering the Challenge failed.
    #[error("agent attestation step failed")]
    Attest(#[source] AttestError),
    /// A message did not encode.
    #[error("cannot encode a frame")]
    Encode(#[source] EncodeError),
    /// A frame did not decode.
    #[error("cannot decode a frame")]
    Decode(#[source] DecodeError),
    /// The server answered with the wrong message kind.
    #[error("unexpected {0} message from the server")]
    Unexpected(&'static str),
    /// The Challenge's signer or signature did not verify against the device's trust
    /// bundle (the device does not touch its TPM for it).
    #[error("the Challenge does not verify: {0}")]
    Challenge(String),
    /// The run's SVID CA could not be set up.
    #[error("SVID CA: {0}")]
    Ca(String),
}

fn tpm_error(e: &dyn std::error::Error) -> FlowError {
    FlowError::Tpm(ErrorChain(e).to_string())
}

/// The server side shared by all devices of a run: one node's state, the policy in force
/// and the signer of its Challenges and Results.
#[derive(Debug)]
pub struct Server {
    /// This node's sessions.
    pub attestor: Attestor,
    /// The `AgentAttestation` document in force.
    pub doc: Document,
    /// The server's signer: an intermediate issued by the trust domain's root (as
    /// `ekattestctl ca issue-signer` makes it).
    pub authority: Authority,
    /// The devices' trust bundle: the root that issued [`Self::authority`].
    pub bundle: TrustBundle,
}

impl Server {
    /// A node named `node` in trust domain `fleet.test` whose policy trusts every EK chaining
    /// to `ca` (the run's swtpm CA), with SPIFFE IDs
    /// `spiffe://fleet.test/agents/tpm/<tpm_ek.model>/<tpm_ek.public_hash>`: what the
    /// in-process tests attest against.
    ///
    /// # Errors
    /// When the CA's certificates cannot be read or the document does not parse.
    pub fn trusting(ca: &crate::swtpm::Ca, node: &str) -> Result<Self, String> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let yaml = crate::fleet::policy_with_template(
            "/agents/tpm/{{tpm_ek.model}}/{{tpm_ek.public_hash}}",
            &read(ca.root_cert_pem())?,
            &read(ca.intermediate_cert_pem())?,
        );
        let doc = Document::parse(yaml.as_bytes())
            .map_err(|e| format!("the test policy does not parse: {e}"))?;
        let attestor = Attestor::new(node, Some("fleet.test"), SessionConfig::default())
            .map_err(|e| format!("cannot create node {node}: {e}"))?
            .agent_id_from_ek(true);
        let day = Duration::from_secs(24 * 3600);
        let (root, root_pem, _) = Authority::generate("fleet.test", day)
            .map_err(|e| format!("cannot create the SVID root CA: {e}"))?;
        let (signer_pem, signer_key) = root
            .issue_signer(day)
            .map_err(|e| format!("cannot issue the server's signer: {e}"))?;
        let authority = Authority::from_pem(signer_pem.as_bytes(), signer_key.as_bytes())
            .map_err(|e| format!("the issued signer does not load: {e}"))?;
        let bundle = TrustBundle::from_pem(
            root_pem.into_bytes(),
            std::path::Path::new("in-process bundle"),
        )
        .map_err(|e| format!("the root CA is no trust bundle: {e}"))?;
        Ok(Self {
            attestor,
            doc,
            authority,
            bundle,
        })
    }
}

/// Where the time of one attestation went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Agent: TPM startup, EK discovery, AK creation.
    pub prepare: Duration,
    /// Server: Login handling (EK validation, MakeCredential, session).
    pub login: Duration,
    /// Agent: ActivateCredential.
    pub activate: Duration,
    /// Server: Answer handling.
    pub answer: Duration,
    /// Whole attestation, first TPM command to Result.
    pub total: Duration,
}

/// What happened to one device.
#[derive(Debug)]
pub struct Report {
    /// The agent id (MQTT client id) the device used.
    pub agent: String,
    /// Which EK it presented.
    pub ek: EkKind,
    /// The server's verdict.
    pub outcome: Result<Identity, Rejection>,
    /// Where the time went.
    pub timings: Timings,
    /// The Answer frame sent, kept so a replay can be attempted.
    pub answer_frame: Option<Vec<u8>>,
}

fn frame<M: ekattest_protocol::msg::Message>(msg: &M) -> Result<Vec<u8>, FlowError> {
    let mut buf = vec![0u8; FRAME_MAX];
    Ok(encode(msg, &mut buf).map_err(FlowError::Encode)?.to_vec())
}

/// Attests the device behind `transport` with its EK of kind `ek` (the first found if
/// `None`), against `server`.
///
/// # Errors
/// [`FlowError`] if the device side fails; a server rejection is a normal [`Report`].
pub fn attest<T: tpm::Transport>(
    transport: T,
    ek: Option<EkKind>,
    server: &Server,
) -> Result<Report, FlowError> {
    let started = Instant::now();
    let mut tpm = Tpm::new(transport);
    tpm.startup_clear().map_err(|e| tpm_error(&e))?;
    tpm.flush_leftovers().map_err(|e| tpm_error(&e))?;
    let endorsement = agent_ek::discover(&mut tpm).map_err(|e| tpm_error(&e))?;
    let ek = endorsement.pick(ek).map_err(|e| tpm_error(&e))?;
    let ak_opts = AkOptions::default();
    let ak = agent_ak::read(&mut tpm, &ak_opts).map_err(|e| tpm_error(&e))?;
    let agent = default_agent_id(&ek.public_hash).to_string();
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| FlowError::Tpm("no random nonce".into()))?;
    let login = agent_attest::login(ek, &endorsement.chain, &ak, None, nonce, None)
        .map_err(FlowError::Attest)?;
    let login_frame = frame(&Uplink::Login(login))?;
    // The device's transcript, over the frame it publishes.
    let transcript = sign::transcript(CLUSTER, &agent, &login_frame).map_err(FlowError::Encode)?;
    let mut timings = Timings {
        prepare: started.elapsed(),
        ..Timings::default()
    };

    // Server: Login -> Challenge.
    let t = Instant::now();
    let reply = {
        let Uplink::Login(login) = decode::<Uplink>(&login_frame).map_err(FlowError::Decode)?
        else {
            return Err(FlowError::Unexpected("uplink"));
        };
        // The server's transcript, over the frame it received.
        let received =
            sign::transcript(CLUSTER, &agent, &login_frame).map_err(FlowError::Encode)?;
        let attestor = &server.attestor;
        let now = Instant::now();
        let outcome = attestor
            .login(
                &server.doc,
                &agent,
                &login,
                &received,
                now,
                SystemTime::now(),
                &mut SystemRandom,
            )
            .and_then(|(mut challenge, _)| {
                server
                    .authority
                    .sign_challenge(&agent, login.signer_hint, &mut challenge)
                    .map_err(|e| Rejection {
                        code: RejectCode::Internal,
                        reason: e.to_string(),
                    })?;
                Ok(challenge)
            });
        match outcome {
            Ok(challenge) => frame(&Downlink::Challenge(challenge))?,
            Err(rejection) => {
                timings.login = t.elapsed();
                timings.total = started.elapsed();
                return Ok(Report {
                    agent,
                    ek: ek.kind,
                    outcome: Err(rejection),
                    timings,
                    answer_frame: None,
                });
            }
        }
    };
    timings.login = t.elapsed();

    // Agent: Challenge -> Answer.
    let t = Instant::now();
    let Downlink::Challenge(challenge) = decode::<Downlink>(&reply).map_err(FlowError::Decode)?
    else {
        return Err(FlowError::Unexpected("result"));
    };
    // Nothing reaches the TPM before the Challenge verifies: signer chained to the bundle,
    // signature over this agent's Challenge, our own transcript.
    let unix_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    server
        .bundle
        .signer(&challenge.signer, unix_now)
        .and_then(|s| s.verify_challenge(&agent, &challenge, &transcript, unix_now))
        .map_err(|e| FlowError::Challenge(ErrorChain(&e).to_string()))?;
    let answer = agent_attest::answer(&mut tpm, ek, &ak_opts, &challenge, &transcript, None)
        .map_err(FlowError::Attest)?;
    let answer_frame = frame(&Uplink::Answer(answer))?;
    timings.activate = t.elapsed();

    // Server: Answer -> Result.
    let t = Instant::now();
    let outcome = answer_frame_to_outcome(server, &agent, &answer_frame)?;
    timings.answer = t.elapsed();
    timings.total = started.elapsed();
    Ok(Report {
        agent,
        ek: ek.kind,
        outcome,
        timings,
        answer_frame: Some(answer_frame),
    })
}

/// Hands an Answer frame from `agent` to the server; also used to replay one.
///
/// # Errors
/// [`FlowError`] if the frame does not decode as an Answer.
pub fn answer_frame_to_outcome(
    server: &Server,
    agent: &str,
    answer_frame: &[u8],
) -> Result<Result<Identity, Rejection>, FlowError> {
    let Uplink::Answer(answer) = decode::<Uplink>(answer_frame).map_err(FlowError::Decode)? else {
        return Err(FlowError::Unexpected("uplink"));
    };
    let outcome = server.attestor.answer(agent, &answer, Instant::now());
    // The agent sees the Result frame, signed over its Login transcript; make sure it
    // encodes within limits.
    let result = match &outcome {
        Ok(identity) => {
            let mut accepted = identity
                .to_accepted()
                .map_err(|r| FlowError::Tpm(r.reason))?;
            server
                .authority
                .sign_result(agent, &answer.session, &identity.transcript, &mut accepted)
                .map_err(|e| FlowError::Ca(e.to_string()))?;
            Outcome::Accepted(accepted)
        }
        Err(r) => Outcome::Rejected(ekattest_protocol::msg::Rejected::new(r.code)),
    };
    frame(&Downlink::Result(result))?;
    Ok(outcome)
}
