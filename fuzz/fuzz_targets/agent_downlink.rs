//! Fuzz target `agent_downlink`: what the agent does with a Downlink frame before it touches
//! its TPM or writes an identity: `decode::<Downlink>`, the X.509 walker
//! `daemon::x509::parse` on the SVID, the Challenge's signer certificate (and on the raw
//! input), `TrustBundle::signer`, `Signer::verify_challenge` and
//! `daemon::identity::verify_result` against a fixed trust bundle.
//! The handlers themselves need an MQTT client and a TPM; everything they decide on an
//! Accepted Result is `verify_result`.
//!
//! Input: `[ctl u8][Downlink frame]`. With `ctl & 1`, the target signs the Result itself
//! with the bundle's CA key (the fuzzer cannot forge ECDSA), so the SVID checks behind the
//! signature check are reached. Fixtures (fuzz/fixtures/, made with openssl for this target
//! only): a P-256 trust-domain CA, its key, and the SVID public key the "agent" sent.
//!
//! Invariants: nothing panics and errors render; the walker's fields are sub-slices of its
//! input (tbs a SEQUENCE, at most one URI SAN reported); a Result that verifies was signed
//! by the CA for this agent and session, certifies our key, carries the Result's SPIFFE ID
//! and is valid now; an unsigned Result never verifies.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use ekattest_agent::daemon::identity::{Signer, TrustBundle, verify_result};
use ekattest_agent::daemon::x509;
use ekattest_protocol::msg::{Downlink, Outcome, SessionId};
use ekattest_protocol::{decode, heapless, sign};
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::DecodePrivateKey as _;

const CA_DER: &[u8] = include_bytes!("../fixtures/td-ca.der");
const CA_KEY: &[u8] = include_bytes!("../fixtures/td-ca.key.der");
const OUR_SPKI: &[u8] = include_bytes!("../fixtures/svid.spki.der");
const AGENT: &str = "ek-00112233445566778899aabbccddeeff";
const SESSION: SessionId = SessionId([7; 16]);
const TRANSCRIPT: sign::Transcript = [0x3c; 32];
/// 2026-11-29: inside the fixtures' validity (2026-11-28 .. 2126).
const NOW: i64 = 1_795_911_654;

struct Fixed {
    bundle: TrustBundle,
    signer: Signer,
    key: SigningKey,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE", CA_DER.to_vec()));
        let bundle = TrustBundle::from_pem(pem.into_bytes(), Path::new("fixtures/td-ca.der"))
            .expect("the fixture CA is a P-256 CA");
        let signer = bundle
            .signer(CA_DER, NOW)
            .expect("the bundle's own CA is a signer");
        Fixed {
            bundle,
            signer,
            key: SigningKey::from_pkcs8_der(CA_KEY).expect("the fixture CA key parses"),
        }
    })
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

fn walk(der: &[u8]) {
    let Ok(c) = x509::parse(der) else { return };
    for part in [
        c.tbs,
        c.signature_algorithm,
        c.signature,
        c.issuer,
        c.subject,
        c.spki,
    ] {
        assert!(within(der, part), "a field points outside the certificate");
    }
    assert_eq!(
        c.tbs.first(),
        Some(&0x30),
        "tbsCertificate is not a SEQUENCE"
    );
    if let Some(uri) = c.uri_san {
        assert!(within(der, uri.as_bytes()));
        assert_eq!(c.uri_sans, 1, "a URI SAN reported beside others");
    }
    assert!(c.uri_sans <= x509::SAN_MAX);
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, frame)) = data.split_first() else {
        return;
    };
    walk(frame);
    let Ok(msg) = decode::<Downlink>(frame) else {
        return;
    };
    let f = fixed();
    let mut accepted = match msg {
        Downlink::Result(Outcome::Accepted(accepted)) => accepted,
        Downlink::Challenge(mut challenge) => {
            walk(&challenge.signer);
            if let Ok(signer) = f.bundle.signer(&challenge.signer, NOW) {
                // Only the bundle's own CA is a signer here (the fuzzer cannot forge a
                // certificate it issued).
                assert!(signer.is_anchor(), "a foreign signer certificate was accepted");
            }
            let unsigned = challenge.signature.is_empty();
            if ctl & 1 == 1 {
                challenge.transcript = TRANSCRIPT;
                let Ok(bytes) = sign::challenge_signed_bytes(AGENT, &challenge) else {
                    return;
                };
                let sig: Signature = f.key.sign(&bytes);
                challenge.signature = heapless::Vec::from_slice(sig.to_der().as_bytes())
                    .expect("a DER P-256 signature fits the field");
            }
            match f.signer.verify_challenge(AGENT, &challenge, &TRANSCRIPT, NOW) {
                Err(e) => assert!(!e.to_string().is_empty()),
                Ok(()) => {
                    assert!(ctl & 1 == 1 || !unsigned, "an unsigned Challenge verified");
                    assert_eq!(challenge.transcript, TRANSCRIPT);
                    assert!(
                        f.signer
                            .verify_challenge("ek-other", &challenge, &TRANSCRIPT, NOW)
                            .is_err(),
                        "a Challenge verified for another agent"
                    );
                    assert!(
                        f.signer
                            .verify_challenge(AGENT, &challenge, &[0; 32], NOW)
                            .is_err(),
                        "a Challenge verified for another Login"
                    );
                }
            }
            return;
        }
        Downlink::Result(Outcome::Rejected(_)) => return,
    };
    walk(&accepted.svid);
    let unsigned = accepted.signature.is_empty();
    if ctl & 1 == 1 {
        let Ok(bytes) = sign::result_signed_bytes(AGENT, &SESSION, &TRANSCRIPT, &accepted) else {
            return;
        };
        let sig: Signature = f.key.sign(&bytes);
        accepted.signature = heapless::Vec::from_slice(sig.to_der().as_bytes())
            .expect("a DER P-256 signature fits the field");
    }
    match verify_result(&f.signer, AGENT, &SESSION, &TRANSCRIPT, &accepted, OUR_SPKI, NOW) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(v) => {
            assert!(ctl & 1 == 1 || !unsigned, "an unsigned Result verified");
            assert_eq!(v.spiffe_id, accepted.spiffe_id.as_str());
            assert_eq!(v.svid, accepted.svid.as_slice());
            assert!(v.not_before <= NOW && NOW <= v.not_after);
            let c = x509::parse(&accepted.svid).expect("a verified SVID parses");
            assert_eq!(c.uri_san, Some(v.spiffe_id.as_str()));
            assert_eq!(c.spki, OUR_SPKI, "a verified SVID certifies another key");
            // The same Result for another agent, session or Login must not verify.
            for (agent, session, t) in [
                ("ek-other", SESSION, TRANSCRIPT),
                (AGENT, SessionId([8; 16]), TRANSCRIPT),
                (AGENT, SESSION, [0; 32]),
            ] {
                assert!(
                    verify_result(&f.signer, agent, &session, &t, &accepted, OUR_SPKI, NOW)
                        .is_err(),
                    "a Result verified for another agent, session or Login"
                );
            }
        }
    }
});
