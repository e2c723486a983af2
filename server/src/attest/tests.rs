//! Attestor tests: the known-answer vector end to end, rejections, and the SVID key's
//! proof of possession.

use std::time::Duration;

use ekattest_protocol::msg::Method;
use ekattest_testkit::testdata;
use sha2::{Digest, Sha256};

use super::*;
use crate::credential::{FixedRandom, SystemRandom};

/// An allow-list policy trusting the rsa2048 vector's EK.
fn doc() -> Document {
    let hash = hex::encode(Sha256::digest(testdata::vector("rsa2048/ek.spki.der")));
    let yaml = format!(
        "section: AgentAttestation\nschema: v1\nspec:\n  policies:\n  - name: p\n    \
         requiredAttestors:\n    - type: tpm_ek\n      config:\n        allowedHashes: [\"{hash}\"]\n"
    );
    Document::parse(yaml.as_bytes()).unwrap()
}

fn login() -> Login {
    Login {
        methods: heapless::Vec::from_slice(&[Method::TpmEk]).unwrap(),
        ek_public: heapless::Vec::from_slice(&testdata::vector("rsa2048/ek.tpm2b_public")).unwrap(),
        ek_cert: None,
        ek_chain: heapless::Vec::new(),
        ak_public: heapless::Vec::from_slice(&testdata::vector("ak.tpm2b_public")).unwrap(),
        svid_key: None,
        key_certify: None,
        nonce: [0x4e; 16],
        signer_hint: None,
    }
}

/// The transcript the tests' Logins are received with.
const T: Transcript = [0x33; 32];

/// The Answer MAC an agent holding `secret` sends for `session` of a Login with
/// transcript [`T`] to node-1.
fn mac(secret: &[u8], session: &SessionId) -> [u8; 32] {
    sign::answer_mac(secret, &T, session, "node-1").unwrap()
}

fn attestor() -> Attestor {
    Attestor::new("node-1", Some("example.org"), SessionConfig::default()).unwrap()
}

/// The vector's fixed inputs in the order login draws them: session secret, session id,
/// MakeCredential seed, OAEP seed.
fn vector_random() -> FixedRandom {
    FixedRandom::new([
        testdata::vector("secret.bin"),
        vec![0x5a; 16],
        testdata::vector("rsa2048/seed.bin"),
        testdata::vector("rsa2048/oaep_seed.bin"),
    ])
}

#[test]
fn login_issues_the_known_answer_challenge_and_answer_proves_identity() {
    let a = attestor();
    let now = Instant::now();
    let (challenge, identity) = a
        .login(
            &doc(),
            "ek-1",
            &login(),
            &T,
            now,
            SystemTime::now(),
            &mut vector_random(),
        )
        .unwrap();
    assert_eq!(identity.check, Check::AllowList);
    let hash = hex::encode(Sha256::digest(testdata::vector("rsa2048/ek.spki.der")));
    assert_eq!(
        identity.spiffe_id,
        format!("spiffe://example.org/agents/tpm/{hash}")
    );
    assert_eq!(identity.attributes, [(AttributeName::PublicHash, hash)]);
    // Byte for byte the credential tpm2-tools and swtpm agree on.
    assert_eq!(
        challenge.credential_blob.as_slice(),
        testdata::vector("rsa2048/expected_credential_blob.tpm2b_id_object")
    );
    assert_eq!(
        challenge.encrypted_secret.as_slice(),
        testdata::vector("rsa2048/expected_secret.tpm2b_encrypted_secret")
    );
    assert_eq!(
        (challenge.node.as_str(), challenge.expires_in),
        ("node-1", 300)
    );

    assert_eq!(challenge.transcript, T);
    assert_eq!(identity.transcript, T);
    let answer = Answer {
        session: challenge.session,
        mac: mac(&testdata::vector("secret.bin"), &challenge.session),
        pop: None,
    };
    let identity = a.answer("ek-1", &answer, now).unwrap();
    assert_eq!(identity.policy, "p");
    let replay = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(replay.code, RejectCode::UnknownSession);
}

/// Logs `agent` in (randomness from `rng`) and returns the Answer carrying `secret`.
fn challenged<R: Random>(a: &Attestor, agent: &str, rng: &mut R, secret: &[u8]) -> Answer {
    let now = Instant::now();
    let (challenge, _) = a
        .login(&doc(), agent, &login(), &T, now, SystemTime::now(), rng)
        .unwrap();
    Answer {
        session: challenge.session,
        mac: mac(secret, &challenge.session),
        pop: None,
    }
}

#[test]
fn wrong_secret_wrong_agent_and_expiry_are_rejected() {
    let a = attestor();
    let now = Instant::now();
    let answer = challenged(&a, "ek-1", &mut SystemRandom, &[0; 32]);
    let r = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::ChallengeFailed);
    assert!(
        r.reason
            .starts_with("challenge response secret does not match"),
        "{}",
        r.reason
    );

    // Expired: even the right secret (from the vector's fixed randomness) is too late.
    let right = testdata::vector("secret.bin");
    let answer = challenged(&a, "ek-1", &mut vector_random(), &right);
    let r = a
        .answer("ek-1", &answer, now + Duration::from_secs(301))
        .unwrap_err();
    assert_eq!(r.code, RejectCode::UnknownSession);
    assert_eq!(a.pending(), 0);

    // The right answer published under another agent's topic consumes the session and
    // fails: a session only ever proves the agent that logged in.
    let answer = challenged(&a, "ek-1", &mut vector_random(), &right);
    let r = a.answer("ek-2", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::UnknownSession);
    assert!(r.reason.contains("belongs to agent ek-1"), "{}", r.reason);
    assert_eq!(a.pending(), 0);

    // With a wrong secret too: another agent learns nothing about the session.
    let answer = challenged(&a, "ek-1", &mut SystemRandom, &[0; 32]);
    let r = a.answer("ek-2", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::UnknownSession);
    assert_eq!(a.pending(), 0);
}

#[test]
fn cheap_checks_reject_before_any_session() {
    let a = attestor();
    let now = Instant::now();
    let mut no_methods = login();
    no_methods.methods.clear();
    let r = a
        .login(
            &doc(),
            "ek-1",
            &no_methods,
            &T,
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
            &T,
            now,
            SystemTime::now(),
            &mut SystemRandom,
        )
        .unwrap_err();
    assert_eq!(r.code, RejectCode::AkRejected);

    let mut other_ek = login();
    other_ek.ek_public =
        heapless::Vec::from_slice(&testdata::vector("p256/ek.tpm2b_public")).unwrap();
    let r = a
        .login(
            &doc(),
            "ek-1",
            &other_ek,
            &T,
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
            &T,
            now,
            SystemTime::now(),
            &mut SystemRandom,
        )
        .unwrap_err();
    assert_eq!(r.code, RejectCode::Malformed);
    assert_eq!(a.pending(), 0, "no rejected login leaves a session");
}

/// An agent-style SVID key (p256, as the agent makes it) and its DER SPKI.
fn svid_key() -> (p256::ecdsa::SigningKey, Vec<u8>) {
    use p256::pkcs8::EncodePublicKey as _;
    let mut seed = [0u8; 32];
    loop {
        getrandom::getrandom(&mut seed).unwrap();
        if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&seed) {
            let spki = key.verifying_key().to_public_key_der().unwrap();
            return (key, spki.as_bytes().to_vec());
        }
    }
}

fn pop(key: &p256::ecdsa::SigningKey, session: &SessionId, mac: &[u8; 32]) -> Vec<u8> {
    use p256::ecdsa::signature::Signer as _;
    let msg = sign::pop_signed_bytes(&T, session, mac);
    let sig: p256::ecdsa::Signature = key.sign(&msg);
    sig.to_der().as_bytes().to_vec()
}

/// Logs `agent` in with `svid_key` (vector randomness, so the secret is secret.bin) and
/// returns the Answer carrying the right MAC and no pop.
fn challenged_with_key(a: &Attestor, agent: &str, spki: &[u8]) -> Answer {
    let mut l = login();
    l.svid_key = Some(heapless::Vec::from_slice(spki).unwrap());
    let (challenge, identity) = a
        .login(
            &doc(),
            agent,
            &l,
            &T,
            Instant::now(),
            SystemTime::now(),
            &mut vector_random(),
        )
        .unwrap();
    assert_eq!(identity.svid_key.as_deref(), Some(spki));
    Answer {
        session: challenge.session,
        mac: mac(&testdata::vector("secret.bin"), &challenge.session),
        pop: None,
    }
}

use ekattest_protocol::msg::SessionId;

#[test]
fn login_with_a_bad_svid_key_is_rejected_before_any_session() {
    let a = attestor();
    let (_, good) = svid_key();
    let mut off_curve = good.clone();
    let last = off_curve.len() - 1;
    off_curve[last] ^= 1;
    let mut trailing = good.clone();
    trailing.push(0);
    for (bad, says) in [
        (testdata::vector("p384/ek.spki.der"), "NistP384"),
        (off_curve, "not on the P-256 curve"),
        (trailing, "trailing"),
        (b"garbage".to_vec(), "svid_key"),
        (Vec::new(), "svid_key"),
    ] {
        let mut l = login();
        l.svid_key = Some(heapless::Vec::from_slice(&bad).unwrap());
        let r = a
            .login(
                &doc(),
                "ek-1",
                &l,
                &T,
                Instant::now(),
                SystemTime::now(),
                &mut SystemRandom,
            )
            .unwrap_err();
        assert_eq!(r.code, RejectCode::ProofOfPossession, "{says}");
        assert!(r.reason.contains(says), "{says}: {}", r.reason);
        assert_eq!(a.pending(), 0);
    }
}

#[test]
fn answer_must_prove_possession_of_the_svid_key() {
    let a = attestor();
    let now = Instant::now();
    let (key, spki) = svid_key();

    // No pop: rejected, and the session is spent.
    let answer = challenged_with_key(&a, "ek-1", &spki);
    let r = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::ProofOfPossession);
    assert!(r.reason.contains("missing"), "{}", r.reason);
    assert_eq!(a.pending(), 0);
    let replay = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(replay.code, RejectCode::UnknownSession);

    // A good pop: accepted, and the identity carries the key for the SVID.
    let mut answer = challenged_with_key(&a, "ek-1", &spki);
    answer.pop = Some(heapless::Vec::from_slice(&pop(&key, &answer.session, &answer.mac)).unwrap());
    let identity = a.answer("ek-1", &answer, now).unwrap();
    assert_eq!(identity.svid_key.as_deref(), Some(spki.as_slice()));

    // A pop over another session (a replayed proof): rejected.
    let mut answer = challenged_with_key(&a, "ek-1", &spki);
    let old = SessionId([0x11; 16]);
    answer.pop = Some(heapless::Vec::from_slice(&pop(&key, &old, &answer.mac)).unwrap());
    let r = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::ProofOfPossession);
    assert!(r.reason.contains("does not verify"), "{}", r.reason);
    assert_eq!(a.pending(), 0);

    // A pop by another key (the TPM holder is not the key holder): rejected.
    let (other, _) = svid_key();
    let mut answer = challenged_with_key(&a, "ek-1", &spki);
    answer.pop =
        Some(heapless::Vec::from_slice(&pop(&other, &answer.session, &answer.mac)).unwrap());
    let r = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::ProofOfPossession);

    // The MAC is checked first: a good pop does not rescue a wrong MAC.
    let mut answer = challenged_with_key(&a, "ek-1", &spki);
    answer.mac = mac(&[0; 32], &answer.session);
    answer.pop = Some(heapless::Vec::from_slice(&pop(&key, &answer.session, &answer.mac)).unwrap());
    let r = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::ChallengeFailed);

    // Another agent's answer is still an unknown session, pop or not.
    let mut answer = challenged_with_key(&a, "ek-1", &spki);
    answer.pop = Some(heapless::Vec::from_slice(&pop(&key, &answer.session, &answer.mac)).unwrap());
    let r = a.answer("ek-2", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::UnknownSession);
}

#[test]
fn pop_without_a_key_is_ignored_and_the_result_carries_a_verifiable_svid() {
    let a = attestor();
    let now = Instant::now();
    let (key, spki) = svid_key();
    let mut answer = challenged(
        &a,
        "ek-1",
        &mut vector_random(),
        &testdata::vector("secret.bin"),
    );
    answer.pop = Some(heapless::Vec::from_slice(&[0x30, 0x00]).unwrap());
    let identity = a.answer("ek-1", &answer, now).unwrap();
    assert_eq!(identity.svid_key, None);

    // The whole success path: the daemon hands the proven identity to the Authority.
    let (ca, _, _) =
        crate::svid::Authority::generate("example.org", Duration::from_secs(3600)).unwrap();
    let mut answer = challenged_with_key(&a, "ek-1", &spki);
    answer.pop = Some(heapless::Vec::from_slice(&pop(&key, &answer.session, &answer.mac)).unwrap());
    let identity = a.answer("ek-1", &answer, now).unwrap();
    let accepted = identity
        .accepted(
            &ca,
            "ek-1",
            &answer.session,
            SystemTime::now(),
            Duration::from_secs(600),
        )
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&accepted.svid).unwrap();
    assert_eq!(cert.public_key().raw, spki.as_slice());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        [x509_parser::extensions::GeneralName::URI(
            &identity.spiffe_id
        )]
    );
    assert!(!accepted.signature.is_empty());
}

/// Logs ek-1 in with the vector's fixed randomness (so the secret is secret.bin).
fn vector_challenge(a: &Attestor, now: Instant) -> Challenge {
    a.login(
        &doc(),
        "ek-1",
        &login(),
        &T,
        now,
        SystemTime::now(),
        &mut vector_random(),
    )
    .unwrap()
    .0
}

#[test]
fn a_mac_over_another_transcript_or_node_fails_and_spends_the_session() {
    let a = attestor();
    let now = Instant::now();
    let secret = testdata::vector("secret.bin");
    // The device's MAC over its own Login's transcript, while the server received a rewritten
    // Login (another transcript): what an attacker who swapped the svid_key gets.
    let challenge = vector_challenge(&a, now);
    let device_t: Transcript = [0x34; 32];
    let answer = Answer {
        session: challenge.session,
        mac: sign::answer_mac(&secret, &device_t, &challenge.session, "node-1").unwrap(),
        pop: None,
    };
    let r = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::ChallengeFailed, "{}", r.reason);
    assert!(r.reason.contains("Login transcript"), "{}", r.reason);
    assert_eq!(a.pending(), 0, "a wrong MAC spends the session");

    // The right secret and transcript but another node's name: refused.
    let challenge = vector_challenge(&a, now);
    let answer = Answer {
        session: challenge.session,
        mac: sign::answer_mac(&secret, &T, &challenge.session, "node-2").unwrap(),
        pop: None,
    };
    assert_eq!(
        a.answer("ek-1", &answer, now).unwrap_err().code,
        RejectCode::ChallengeFailed
    );
    // The raw secret in the MAC field (what a v1 agent would have sent): refused.
    let challenge = vector_challenge(&a, now);
    let mut raw = [0u8; 32];
    raw.copy_from_slice(&secret);
    let answer = Answer {
        session: challenge.session,
        mac: raw,
        pop: None,
    };
    assert_eq!(
        a.answer("ek-1", &answer, now).unwrap_err().code,
        RejectCode::ChallengeFailed
    );
}

#[test]
fn one_pending_session_per_ek_whatever_the_agent_id() {
    let a = attestor();
    let now = Instant::now();
    let first = challenged(
        &a,
        "ek-1",
        &mut vector_random(),
        &testdata::vector("secret.bin"),
    );
    // The same EK under another agent id (a replayed Login) replaces the first session.
    let second = challenged(&a, "ek-x", &mut SystemRandom, &[0; 32]);
    assert_eq!(a.pending(), 1, "one session per EK");
    let r = a.answer("ek-1", &first, now).unwrap_err();
    assert_eq!(r.code, RejectCode::UnknownSession);
    assert_eq!(a.pending(), 1);
    let r = a.answer("ek-x", &second, now).unwrap_err();
    assert_eq!(r.code, RejectCode::ChallengeFailed);
    assert_eq!(a.pending(), 0);
}

/// Bans come first, but the other refusals keep their order: a Login that fails the AK
/// check on a foreign agent id is refused for its AK (the attack the AK check names), and
/// an EK that does not decode is reported after the AK check, as before bans existed.
#[test]
fn the_ak_check_comes_before_the_agent_id_and_the_ek_decode() {
    let a = attestor().agent_id_from_ek(true);
    let now = Instant::now();
    let mut bad_ak = login();
    bad_ak.ak_public = bad_ak.ek_public.clone();
    let mut both = bad_ak.clone();
    both.ek_public = heapless::Vec::from_slice(&[0, 2, 0xff, 0xff]).unwrap();
    for (what, l) in [("foreign agent id", &bad_ak), ("undecodable EK", &both)] {
        let r = a
            .login(
                &doc(),
                "agent-7",
                l,
                &T,
                now,
                SystemTime::now(),
                &mut SystemRandom,
            )
            .unwrap_err();
        assert_eq!(r.code, RejectCode::AkRejected, "{what}: {}", r.reason);
    }
    // With a good AK, the same undecodable EK is what is refused.
    let mut ek_only = login();
    ek_only.ek_public = both.ek_public.clone();
    let r = a
        .login(
            &doc(),
            "agent-7",
            &ek_only,
            &T,
            now,
            SystemTime::now(),
            &mut SystemRandom,
        )
        .unwrap_err();
    assert_eq!(r.code, RejectCode::Malformed, "{}", r.reason);
    assert_eq!(a.pending(), 0);
}

#[test]
fn agent_id_from_ek_refuses_other_ids_before_any_session() {
    let a = attestor().agent_id_from_ek(true);
    let now = Instant::now();
    let hash = Sha256::digest(testdata::vector("rsa2048/ek.spki.der"));
    let mut h = [0u8; 32];
    h.copy_from_slice(&hash);
    let derived = ekattest_protocol::topic::default_agent_id(&h);
    for invented in ["ek-1", "agent-7", "ek-00000000000000000000000000000000"] {
        let r = a
            .login(
                &doc(),
                invented,
                &login(),
                &T,
                now,
                SystemTime::now(),
                &mut SystemRandom,
            )
            .unwrap_err();
        assert_eq!(r.code, RejectCode::AgentIdMismatch, "{invented}");
        assert!(r.reason.contains(derived.as_str()), "{}", r.reason);
        assert_eq!(a.pending(), 0);
    }
    let (challenge, _) = a
        .login(
            &doc(),
            derived.as_str(),
            &login(),
            &T,
            now,
            SystemTime::now(),
            &mut vector_random(),
        )
        .unwrap();
    let answer = Answer {
        session: challenge.session,
        mac: mac(&testdata::vector("secret.bin"), &challenge.session),
        pop: None,
    };
    assert!(a.answer(derived.as_str(), &answer, now).is_ok());
}

#[test]
fn require_tpm_key_refuses_software_svid_keys_and_checks_certifications() {
    let now = Instant::now();
    let (_, spki) = svid_key();
    let mut with_key = login();
    with_key.svid_key = Some(heapless::Vec::from_slice(&spki).unwrap());
    let run = |a: &Attestor, l: &Login| {
        a.login(
            &doc(),
            "ek-1",
            l,
            &T,
            now,
            SystemTime::now(),
            &mut SystemRandom,
        )
    };

    // Off (the default): a software key is challenged.
    assert!(run(&attestor(), &with_key).is_ok());
    // On: refused before any session, with the setting named.
    let strict = attestor().require_tpm_key(true);
    let r = run(&strict, &with_key).unwrap_err();
    assert_eq!(r.code, RejectCode::KeyCertification);
    assert!(r.reason.contains("require-tpm-svid-key"), "{}", r.reason);
    assert_eq!(strict.pending(), 0);
    // No SVID asked for: nothing to certify (the Login proves the TPM only).
    assert!(run(&strict, &login()).is_ok());

    // A certification that does not parse is refused whatever the setting.
    let mut forged = with_key.clone();
    forged.key_certify = Some(ekattest_protocol::msg::KeyCertify {
        public: heapless::Vec::from_slice(&testdata::vector("ak.tpm2b_public")).unwrap(),
        attest: heapless::Vec::from_slice(&[0, 2, 0xff, 0x54]).unwrap(),
        signature: heapless::Vec::from_slice(&[0, 0x18]).unwrap(),
    });
    let r = run(&attestor(), &forged).unwrap_err();
    assert_eq!(r.code, RejectCode::KeyCertification);
    assert!(r.reason.contains("certified key"), "{}", r.reason);
}

/// The rsa2048 vector's EK hash.
fn vector_ek_hash() -> [u8; 32] {
    Sha256::digest(testdata::vector("rsa2048/ek.spki.der")).into()
}

fn ban(target: crate::registry::BanTarget) -> crate::registry::Ban {
    crate::registry::Ban {
        target,
        reason: "stolen".into(),
        at: 1,
        by: "ops@host".into(),
    }
}

#[test]
fn a_banned_ek_or_agent_id_is_refused_before_any_signature_check() {
    use crate::registry::{BanList, BanTarget};
    let bans = Arc::new(BanList::new());
    let a = attestor().require_tpm_key(true).bans(Arc::clone(&bans));
    let now = Instant::now();
    // Each Login below would fail a later check (no methods: policy; an EK as AK: the AK
    // check; a software SVID key with require-tpm-key: the certification), and the
    // randomness is empty: the ban must come first, before any session or MakeCredential.
    let mut no_methods = login();
    no_methods.methods.clear();
    let mut bad_ak = login();
    bad_ak.ak_public = bad_ak.ek_public.clone();
    let mut software_key = login();
    software_key.svid_key = Some(heapless::Vec::from_slice(&svid_key().1).unwrap());
    bans.replace(vec![ban(BanTarget::Ek(vector_ek_hash()))]);
    for (what, l) in [
        ("plain", login()),
        ("no methods", no_methods),
        ("bad AK", bad_ak),
        ("software key", software_key),
    ] {
        // Under any agent id: the EK is banned, not the id.
        for agent in ["ek-1", "renamed"] {
            let mut rng = FixedRandom::new(Vec::<Vec<u8>>::new());
            let r = a
                .login(&doc(), agent, &l, &T, now, SystemTime::now(), &mut rng)
                .unwrap_err();
            assert_eq!(
                r.code,
                RejectCode::Banned,
                "{what} as {agent}: {}",
                r.reason
            );
            assert!(
                r.reason.contains("(stolen)")
                    && r.reason.contains(&format!(
                        "ekattestctl agent unban --ek {}",
                        hex::encode(vector_ek_hash())
                    )),
                "{}",
                r.reason
            );
        }
    }
    assert_eq!(a.pending(), 0);

    // An agent id ban needs nothing decoded: even a malformed EK is refused as banned.
    bans.replace(vec![ban(BanTarget::Agent("gw-9".into()))]);
    let mut garbage = login();
    garbage.ek_public.truncate(10);
    let mut rng = FixedRandom::new(Vec::<Vec<u8>>::new());
    let r = a
        .login(
            &doc(),
            "gw-9",
            &garbage,
            &T,
            now,
            SystemTime::now(),
            &mut rng,
        )
        .unwrap_err();
    assert_eq!(r.code, RejectCode::Banned);
    assert!(r.reason.contains("agent id gw-9"), "{}", r.reason);
    // Another id with the same EK is not banned by it.
    let r = a
        .login(
            &doc(),
            "gw-8",
            &garbage,
            &T,
            now,
            SystemTime::now(),
            &mut rng,
        )
        .unwrap_err();
    assert_eq!(r.code, RejectCode::Malformed);

    // Lifted: the vector attests again.
    bans.replace(Vec::new());
    let b = attestor().bans(Arc::clone(&bans));
    let answer = challenged(
        &b,
        "ek-1",
        &mut vector_random(),
        &testdata::vector("secret.bin"),
    );
    assert!(b.answer("ek-1", &answer, now).is_ok());
}

#[test]
fn a_ban_between_login_and_answer_refuses_the_answer() {
    use crate::registry::{BanList, BanTarget};
    let bans = Arc::new(BanList::new());
    let a = attestor().bans(Arc::clone(&bans));
    let now = Instant::now();
    let answer = challenged(
        &a,
        "ek-1",
        &mut vector_random(),
        &testdata::vector("secret.bin"),
    );
    bans.replace(vec![ban(BanTarget::Ek(vector_ek_hash()))]);
    let r = a.answer("ek-1", &answer, now).unwrap_err();
    assert_eq!(r.code, RejectCode::Banned);
    // The session is spent: lifting the ban does not revive it.
    bans.replace(Vec::new());
    assert_eq!(
        a.answer("ek-1", &answer, now).unwrap_err().code,
        RejectCode::UnknownSession
    );
}

#[test]
fn the_identity_carries_the_eks_public_hash() {
    let a = attestor();
    let (_, identity) = a
        .login(
            &doc(),
            "ek-1",
            &login(),
            &T,
            Instant::now(),
            SystemTime::now(),
            &mut vector_random(),
        )
        .unwrap();
    assert_eq!(identity.ek_hash, vector_ek_hash());
    assert_eq!(ek_hash_of(&login()), Some(vector_ek_hash()));
    let mut garbage = login();
    garbage.ek_public.truncate(10);
    assert_eq!(ek_hash_of(&garbage), None);
}
