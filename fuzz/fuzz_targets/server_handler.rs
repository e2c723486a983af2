//! Fuzz target `server_handler`: the server's whole message handler, `Attestor` (decode an
//! uplink frame, Login -> EK/AK checks, session, MakeCredential -> Challenge; Answer ->
//! identity), over a sequence of frames from several agents.
//!
//! Input: records `[ctl: u8][len: u16 BE][frame: len bytes]` (a short last record takes what
//! is left). `ctl` bits: 0-1 the sending agent (of 4); 2 an Answer names the live session of
//! agent (bits 4-5) instead of its own; 3 an Answer carries that session's true secret; 6
//! time jumps past the session TTL before the record (expiring every session).
//!
//! The policy is an allow-list of the EKs in ../shared/testdata/make-credential (cheap: no
//! certificate chain), the session cap is 3. The target keeps its own model of the live
//! sessions (agent -> session id, secret; the secret read from the random source, which
//! `SessionStore::begin` draws before the id) and checks after every record that
//! `pending()` equals the model and stays within the cap; that a Login is accepted only for
//! an allow-listed EK, with a Challenge the agent can parse; that an Answer is accepted
//! exactly when it names a live session of the same agent with its secret, and that every
//! answer consumes the session it names.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ekattest_agent::tpm::activate::Credential;
use ekattest_fuzz::testdata;
use ekattest_protocol::msg::{AttributeName, SessionId};
use ekattest_protocol::public::Public;
use ekattest_protocol::{RejectCode, Uplink, decode, heapless};
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

/// Live sessions as the target expects them: agent -> (session, secret).
type Model = BTreeMap<&'static str, (SessionId, [u8; SECRET_LEN])>;

struct Run {
    attestor: Attestor,
    model: Model,
    now: Instant,
    accepted_logins: usize,
}

impl Run {
    fn login(&mut self, agent: &'static str, login: &ekattest_protocol::msg::Login) {
        let (doc, hashes) = fixture();
        let wall = UNIX_EPOCH + Duration::from_secs(1_735_689_600);
        let mut rng = Recording(Vec::new());
        let result = self
            .attestor
            .login(doc, agent, login, self.now, wall, &mut rng);
        match result {
            Ok((challenge, identity)) => {
                self.accepted_logins += 1;
                assert_eq!(challenge.node.as_str(), NODE);
                assert_eq!(u64::from(challenge.expires_in), TTL.as_secs());
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
                    self.model.values().all(|(s, _)| *s != challenge.session),
                    "session id reused"
                );
                self.model.insert(agent, (challenge.session, secret));
            }
            Err(rejection) => {
                assert!(!rejection.reason.is_empty(), "rejection without a reason");
                if rejection.code == RejectCode::Busy {
                    assert!(self.model.len() >= MAX_SESSIONS, "busy below the cap");
                    assert!(!self.model.contains_key(agent), "busy for a re-login");
                }
                // A failure after the session was opened cancels it, and the agent's previous
                // session went when the new one was opened.
                let pending = self.attestor.pending();
                if pending + 1 == self.model.len() && self.model.contains_key(agent) {
                    assert_eq!(rejection.code, RejectCode::Internal, "{}", rejection.reason);
                    self.model.remove(agent);
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
            && let Some((session, _)) = self.model.get(target)
        {
            answer.session = *session;
        }
        let owner = self
            .model
            .iter()
            .find(|(_, (s, _))| *s == answer.session)
            .map(|(a, (_, secret))| (*a, *secret));
        if ctl & 0x08 != 0
            && let Some((_, secret)) = owner
        {
            answer.secret = heapless::Vec::from_slice(&secret).unwrap_or_default();
        }
        let result = self.attestor.answer(agent, answer, self.now);
        match owner {
            None => match result {
                Ok(_) => panic!("answer accepted for a session that is not live"),
                Err(r) => assert_eq!(r.code, RejectCode::UnknownSession, "{}", r.reason),
            },
            Some((owner, secret)) => {
                self.model.remove(owner);
                let right = owner == agent && answer.secret.as_slice() == secret.as_slice();
                match result {
                    Ok(identity) => {
                        assert!(right, "wrong answer accepted (owner {owner}, from {agent})");
                        assert!(identity.spiffe_id.starts_with("spiffe://"));
                    }
                    // Another agent's answer never reveals the session: right or wrong
                    // secret, it reads as an unknown session.
                    Err(r) if owner != agent => {
                        assert_eq!(r.code, RejectCode::UnknownSession, "{}", r.reason)
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
            Ok(Uplink::Login(login)) => run.login(agent, &login),
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
