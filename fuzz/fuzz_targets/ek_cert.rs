//! Fuzz target `ek_cert`: the server's EK validation (`ekattest_server::ek::validate`:
//! certificate parsing, TCG EK profile, chain building, allow-list) and the agent's
//! certificate walker (`ekattest_agent::cert::summarize`), on the same bytes.
//!
//! The policy is fixed: caCerts = STMicro's RSA root, intermediateCerts = its intermediate
//! 05, allowedHashes = the real STM leaf's key hash (../shared/testdata/real-ek), at a time
//! when that chain is valid. The input is validated as the EK certificate alone, and split
//! as EK certificate (its first DER object) + presented chain (the rest), in enforce and
//! warn profile modes.
//!
//! Invariants: nothing panics; a verdict is consistent (an allow-list pass names exactly the
//! listed hash and no certificate attributes; a chain pass has a certificate, its serial, and
//! a hash the agent's walker computes the same way).
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ekattest_agent::cert::{NAME_MAX, summarize};
use ekattest_fuzz::testdata_pem;
use ekattest_protocol::der::nv::first_object;
use ekattest_protocol::spki::PublicKey;
use ekattest_server::ek::{
    ChainOptions, Check, EkPolicy, Evidence, ProfileMode, TrustStore, Verdict, validate,
};
use libfuzzer_sys::fuzz_target;

/// `tpm_ek.public_hash` of the real STM leaf (../shared/testdata/real-ek/README.md).
const STM_HASH: &str = "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab";

fn policies() -> &'static [EkPolicy; 2] {
    static POLICIES: OnceLock<[EkPolicy; 2]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let trust = TrustStore::new(
            testdata_pem("real-ek/ca/STM_RSA_RT.pem"),
            testdata_pem("real-ek/ca/STM_RSA_05I.pem"),
            ChainOptions::default(),
        )
        .unwrap_or_else(|e| panic!("STM trust store: {e}"));
        let mut hash = [0u8; 32];
        hex::decode_to_slice(STM_HASH, &mut hash).unwrap_or_else(|e| panic!("{e}"));
        let policy = |profile| EkPolicy {
            trust: Some(trust.clone()),
            allowed_hashes: HashSet::from([hash]),
            profile,
            chain: ChainOptions::default(),
        };
        [policy(ProfileMode::Enforce), policy(ProfileMode::Warn)]
    })
}

/// 2025-01-01: inside the STM leaf's and CAs' validity.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_735_689_600)
}

fn check(verdict: &Verdict, ev: &Evidence<'_>) {
    let a = &verdict.attributes;
    assert_eq!(a.public_hash.len(), 64, "public_hash {:?}", a.public_hash);
    match verdict.passed {
        Check::AllowList => {
            assert_eq!(
                a.public_hash, STM_HASH,
                "allow-list pass for an unlisted key"
            );
            assert!(
                a.serial_number.is_none() && a.manufacturer.is_none() && a.model.is_none(),
                "allow-list pass emitted unverified certificate attributes: {a:?}"
            );
        }
        Check::Chain => {
            let cert = ev
                .ek_cert
                .unwrap_or_else(|| panic!("chain pass without a certificate"));
            assert!(a.serial_number.is_some(), "chain pass without a serial");
            // The agent reads the same key from the same certificate.
            let der = first_object(cert).unwrap_or_else(|e| panic!("verified cert: {e}"));
            let summary = summarize(der).unwrap_or_else(|e| panic!("agent cannot walk it: {e}"));
            let key = PublicKey::from_spki_der(summary.spki)
                .unwrap_or_else(|e| panic!("agent reads another SPKI: {e}"));
            let hash = key.public_hash().map(hex::encode);
            assert_eq!(
                hash.as_deref(),
                Ok(a.public_hash.as_str()),
                "agent/server key differ"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = summarize(data) {
        assert!(s.issuer.len() <= NAME_MAX + 3 && s.subject.len() <= NAME_MAX + 3);
        let (d, p) = (data.as_ptr() as usize, s.spki.as_ptr() as usize);
        assert!(
            p >= d && p + s.spki.len() <= d + data.len(),
            "spki outside the input"
        );
    }
    let whole = Evidence {
        ek_cert: Some(data),
        ek_chain: &[],
        ek_public: None,
    };
    let split = first_object(data).ok().map(|cert| {
        // The object may sit behind a PC Client wrapper: the chain starts after it.
        let end = cert.as_ptr() as usize - data.as_ptr() as usize + cert.len();
        let chain = data.get(end..).unwrap_or_default();
        Evidence {
            ek_cert: Some(cert),
            ek_chain: chain,
            ek_public: None,
        }
    });
    for policy in policies() {
        for ev in std::iter::once(&whole).chain(split.as_ref()) {
            if let Ok(verdict) = validate(policy, ev, now()) {
                check(&verdict, ev);
            }
        }
    }
});
