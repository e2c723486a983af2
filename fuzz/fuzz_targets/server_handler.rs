//! Fuzz target `server_handler`: the server's whole message handler, `Attestor` (decode an
//! uplink frame, Login -> EK/AK checks, session, MakeCredential -> Challenge; Answer ->
//! identity), over a sequence of frames from several agents.
//!
//! Input: records `[ctl: u8][len: u16 BE][frame: len bytes]` (a short last record takes what
//! is left). `ctl` bits: 0-1 the sending agent (of 4); 2 an Answer names the live session of
//! agent (bits 4-5) instead of its own; 3 an Answer carries that session's true MAC (over its
//! Login transcript, with its secret); 6 time jumps past the session TTL before the record
//! (expiring every session).
//!
//! The policy is an allow-list of the EKs in ../shared/testdata/make-credential (cheap: no
//! certificate chain), the session cap is 3. The target keeps its own model of the live
//! sessions (one per EK: EK hash -> agent, session id, secret, transcript; the secret read
//! from the random source, which `SessionStore::begin` draws before the id) and checks after
//! every record that `pending()` equals the model and stays within the cap; that a Login is
//! accepted only for an allow-listed EK, with a Challenge the agent can parse that names the
//! Login's transcript; that an Answer is accepted exactly when it names a live session of
//! the same agent with the MAC over that session's transcript, and that every answer
//! consumes the session it names.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ekattest_agent::tpm::activate::Credential;
use ekattest_fuzz::testdata;
use ekattest_protocol::msg::{AttributeName, SessionId};
use ekattest_protocol::tpm::public::Public;
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::{RejectCode, Uplink, decode};
use ekattest_server::attest::Attestor;
use ekattest_server::config::Document;
use ekattest_server::credential::{Random, RandomError, SystemRandom};
use ekattest_server::session::{SECRET_LEN, SessionConfig};
use libfuzzer_sys::fuzz_target;

const AGENTS: [&str; 4] = ["agent-0", "agent-1", "agent-2", "agent-3"];
const MAX_SESSIONS: usize = 3;
const TTL: Duration = Duration::from_secs(60);
const NODE: &str = "node-fuzz";
const TRUST_DOMAIN: &str = "example.org";
const CLUSTER: &str = "c-fuzz";

/// The policy document and its allow-listed hashes (lowercase hex).
fn fixture() -> &'static (Document, Vec<String>) {
    static FIXTURE: OnceLock<(Document, Vec<String>)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut hashes = Vec::new();
        for case in ["rsa2048", "p256", "p384"] {
            for dir in [case.to_owned(), format!("swtpm-bound-{case}")] {
                let bytes = testdata(&format!("make-credential/{dir}/ek.tpm2b_public"));
                let public = Public::decode(&bytes).unwrap_or_else(|e| panic!("{dir}: {e}"));
                let hash = public
                    .key
                    .public_hash()
                    .unwrap_or_else(|e| panic!("{dir}: {e}"));
                hashes.push(hex::encode(hash));
            }
        }
        let mut yaml = String::from(
            "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n    - name: fuzz\n      \
             requiredAttestors:\n        - type: tpm_ek\n          config:\n            \
             allowedHashes:\n",
        );
        for h in &hashes {
            yaml.push_str(&format!("              - \"{h}\"\n"));
        }
        let doc = Document::parse(yaml.as_bytes()).unwrap_or_else(|e| panic!("policy: {e}"));
        (doc, hashes)
    })
}

/// The system CSPRNG, remembering what it handed out.
struct Recording(Vec<Vec<u8>>);

impl Random for Recording {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), RandomError> {
        SystemRandom.fill(out)?;
        self.0.push(out.to_vec());
        Ok(())
    }

    fn is_system(&self) -> bool {
        true
    }
}

/// A live session as the target expects it.
#[derive(Clone, Copy)]
struct Live {
    agent: &'static str,
    session: SessionId,
    secret: [u8; SECRET_LEN],
    transcript: Transcript,
}

/// Live sessions as the target expects them: EK hash -> session.
type Model = BTreeMap<String, Live>;

/// The lowercase hex public_hash of a Login's EK, if its public area parses.
fn ek_hash(login: &ekattest_protocol::msg::Login) -> Option<String> {
    let public = Public::decode(&login.ek_public).ok()?;
    public.key.public_hash().ok().map(hex::encode)
}

struct Run {
    attestor: Attestor,
    model: Model,
    now: Instant,
    accepted_logins: usize,
}

impl Run {
    fn login(&mut self, agent: &'static str, frame: &[u8], login: &ekattest_protocol::msg::Login) {
        let (doc, hashes) = fixture();
        let wall = UNIX_EPOCH + Duration::from_secs(1_735_689_600);
        let mut rng = Recording(Vec::new());
        let transcript = sign::transcript(CLUSTER, agent, frame)
            .unwrap_or_else(|e| panic!("transcript of a decoded Login: {e}"));
        let result =
            self.attestor
                .login(doc, agent, login, &transcript, self.now, wall, &mut rng);
        match result {
            Ok((challenge, identity)) => {
                self.accepted_logins += 1;
                assert_eq!(challenge.node.as_str(), NODE);
                assert_eq!(u64::from(challenge.expires_in), TTL.as_secs());
                assert_eq!(challenge.transcript, transcript, "the Challenge names another Login");
                assert_eq!(identity.transcript, transcript);
                let hash = identity
                    .attributes
                    .iter()
                    .find(|(n, _)| *n == AttributeName::PublicHash)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| panic!("identity without public_hash"));
                assert!(
                    hashes.iter().any(|h| h == hash),
                    "accepted an unlisted EK {hash}"
                );
                let expected = format!("spiffe://{TRUST_DOMAIN}/agents/tpm/{hash}");
                assert_eq!(identity.spiffe_id, expected);
                // The agent must be able to take the credential apart.
                if let Err(e) =
                    Credential::from_tpm2b(&challenge.credential_blob, &challenge.encrypted_secret)
                {
                    panic!("the agent cannot parse the server's challenge: {e}");
                }
                // begin() draws the secret, then the id (credential/random.rs).
                let at = rng
                    .0
                    .iter()
                    .rposition(|v| v.as_slice() == challenge.session.0.as_slice())
                    .unwrap_or_else(|| panic!("session id not drawn from the random source"));
                let secret: [u8; SECRET_LEN] = at
                    .checked_sub(1)
                    .and_then(|i| rng.0[i].as_slice().try_into().ok())
                    .unwrap_or_else(|| panic!("no {SECRET_LEN}-byte secret drawn before the id"));
                assert!(
                    self.model.values().all(|l| l.session != challenge.session),
                    "session id reused"
                );
                // One session per EK: a Login replaces the pending one of its EK.
                self.model.insert(
                    hash.to_owned(),
                    Live {
                        agent,
                        session: challenge.session,
                        secret,
                        transcript,
                    },
                );
            }
            Err(rejection) => {
                assert!(!rejection.reason.is_empty(), "rejection without a reason");
                let ek = ek_hash(login);
                let relogin = ek.as_ref().is_some_and(|h| self.model.contains_key(h));
                if rejection.code == RejectCode::Busy {
                    assert!(self.model.len() >= MAX_SESSIONS, "busy below the cap");
                    assert!(!relogin, "busy for a re-login of a pending EK");
                }
                // A failure after the session was opened cancels it, and the EK's previous
                // session went when the new one was opened.
                let pending = self.attestor.pending();
                if pending + 1 == self.model.len() && relogin {
                    assert_eq!(rejection.code, RejectCode::Internal, "{}", rejection.reason);
                    if let Some(h) = ek {
                        self.model.remove(&h);
                    }
                }
            }
        }
    }

    fn answer(
        &mut self,
        agent: &'static str,
        ctl: u8,
        answer: &mut ekattest_protocol::msg::Answer,
    ) {
        let target = AGENTS[usize::from(ctl >> 4) & 3];
        if ctl & 0x04 != 0
            && let Some(live) = self.model.values().find(|l| l.agent == target)
        {
            answer.session = live.session;
        }
        let owner = self
            .model
            .iter()
            .find(|(_, l)| l.session == answer.session)
            .map(|(h, l)| (h.clone(), *l));
        if ctl & 0x08 != 0
            && let Some((_, live)) = &owner
            && let Ok(mac) = sign::answer_mac(&live.secret, &live.transcript, &live.session, NODE)
        {
            answer.mac = mac;
        }
        let result = self.attestor.answer(agent, answer, self.now);
        match owner {
            None => match result {
                Ok(_) => panic!("answer accepted for a session that is not live"),
                Err(r) => assert_eq!(r.code, RejectCode::UnknownSession, "{}", r.reason),
            },
            Some((hash, live)) => {
                self.model.remove(&hash);
                let right = live.agent == agent
                    && sign::answer_mac_matches(
                        &live.secret,
                        &live.transcript,
                        &live.session,
                        NODE,
                        &answer.mac,
                    );
                match result {
                    Ok(identity) => {
                        assert!(right, "wrong answer accepted (owner {}, from {agent})", live.agent);
                        assert!(identity.spiffe_id.starts_with("spiffe://"));
                    }
                    // Another agent's answer never reveals the session: right or wrong MAC,
                    // it reads as an unknown session.
                    Err(r) if live.agent != agent => {
                        assert_eq!(r.code, RejectCode::UnknownSession, "{}", r.reason)
                    }
                    // A right MAC with a Login svid_key still needs the proof of possession.
                    Err(r) if r.code == RejectCode::ProofOfPossession => {
                        assert!(right, "proof of possession checked before the MAC")
                    }
                    Err(r) => {
                        assert!(!right, "right answer rejected: {}", r.reason);
                        assert_eq!(r.code, RejectCode::ChallengeFailed, "{}", r.reason);
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    fixture();
    let config = SessionConfig {
        ttl: TTL,
        max_sessions: MAX_SESSIONS,
    };
    let attestor =
        Attestor::new(NODE, Some(TRUST_DOMAIN), config).unwrap_or_else(|e| panic!("attestor: {e}"));
    let mut run = Run {
        attestor,
        model: Model::new(),
        now: Instant::now(),
        accepted_logins: 0,
    };
    let mut rest = data;
    while let [ctl, rest_after_ctl @ ..] = rest {
        let ctl = *ctl;
        let (len, body) = match rest_after_ctl {
            [hi, lo, body @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), body),
            _ => (rest_after_ctl.len(), &[][..]),
        };
        let (frame, next) = body.split_at(len.min(body.len()));
        rest = next;
        let agent = AGENTS[usize::from(ctl & 3)];
        if ctl & 0x40 != 0 {
            run.now += 2 * TTL;
            let swept = run.attestor.sweep(run.now);
            assert_eq!(swept, run.model.len(), "sweep after the TTL");
            run.model.clear();
        }
        match decode::<Uplink>(frame) {
            Ok(Uplink::Login(login)) => run.login(agent, frame, &login),
            Ok(Uplink::Answer(mut answer)) => run.answer(agent, ctl, &mut answer),
            Err(_) => {}
        }
        let pending = run.attestor.pending();
        assert_eq!(
            pending,
            run.model.len(),
            "pending sessions differ from the model"
        );
        assert!(pending <= MAX_SESSIONS, "{pending} sessions over the cap");
        assert!(pending <= run.accepted_logins);
    }
});
