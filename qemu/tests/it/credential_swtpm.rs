//! Credentials made by the server for live swtpm devices are activated by two independent
//! clients: tpm2-tools (`tpm2_activatecredential`) and the agent crate's TPM layer.
//!
//! Needs swtpm, swtpm_setup, swtpm_localca, tpm2-tools and openssl; run with
//! `cargo test -p ekattest-fleet --features it --test it credential_swtpm::`. A missing tool fails
//! the test with the harness's message (never a skip).
#![cfg(test)]

use ekattest_agent::tpm::activate::{self, Credential as AgentCredential};
use ekattest_agent::tpm::ak::{self as agent_ak, AkOptions};
use ekattest_agent::tpm::ek::{self as agent_ek, EkKind as AgentEkKind};
use ekattest_fleet::{Ca, Device, EkKind, ProvisionOptions};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::ak::check_ak;
use ekattest_server::credential::{SystemRandom, make_credential};

fn device(rsa_keysize: u16) -> (Ca, Device) {
    let ca = Ca::create().unwrap_or_else(|e| panic!("cannot create the swtpm test CA: {e}"));
    let opts = ProvisionOptions {
        rsa_keysize,
        p256_ek_cert: true,
    };
    let dev =
        Device::provision(&ca, &opts).unwrap_or_else(|e| panic!("cannot provision swtpm: {e}"));
    (ca, dev)
}

/// A fresh 32-byte challenge secret, as the session store makes them.
fn secret() -> Vec<u8> {
    let mut s = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut s).unwrap();
    s
}

fn tpm2_tools_round_trip(dev: &Device, kinds: &[EkKind]) {
    let ak = dev.tpm2_create_ak().unwrap();
    let checked = check_ak(&ak.public).unwrap_or_else(|e| panic!("tpm2-tools AK refused: {e}"));
    assert_eq!(
        checked.name.as_slice(),
        ak.name.as_slice(),
        "AK Name from the bytes received"
    );
    for &kind in kinds {
        let ek_bytes = dev.ek_public(kind).unwrap();
        let ek = Public::decode(&ek_bytes).unwrap();
        let secret = secret();
        let c = make_credential(&ek, &checked.name, &secret, &mut SystemRandom).unwrap();
        let got = dev
            .tpm2_activatecredential(&ak, kind, &c.to_tpm2_tools_file())
            .unwrap_or_else(|e| {
                panic!("{kind}: tpm2_activatecredential refused our credential: {e}")
            });
        assert_eq!(got, secret, "{kind}: activated secret");

        // Bound to the AK Name: a credential for another Name fails the integrity check.
        let mut other = checked.name.to_vec();
        other[2] ^= 0xFF;
        let wrong = make_credential(&ek, &other, &secret, &mut SystemRandom).unwrap();
        let err = dev.tpm2_activatecredential(&ak, kind, &wrong.to_tpm2_tools_file());
        assert!(
            err.is_err(),
            "{kind}: credential for another AK name was activated"
        );
    }
}

fn agent_round_trip(dev: &Device, kinds: &[AgentEkKind]) {
    let spec = ekattest_agent::ops::parse_spec(Some(&dev.spec())).unwrap();
    let mut tpm = ekattest_agent::ops::open(&spec)
        .unwrap_or_else(|e| panic!("agent cannot open {}: {e}", dev.spec()));
    let endorsement = agent_ek::discover(&mut tpm).unwrap();
    let opts = AkOptions::default();
    let ak = agent_ak::read(&mut tpm, &opts).unwrap();
    let checked = check_ak(&ak.public).unwrap_or_else(|e| panic!("agent AK refused: {e}"));
    assert_eq!(checked.name.as_slice(), ak.name.as_slice());
    for &kind in kinds {
        let ek = endorsement.pick(Some(kind)).unwrap();
        let public = Public::decode(&ek.public).unwrap();
        let secret = secret();
        let c = make_credential(&public, &checked.name, &secret, &mut SystemRandom).unwrap();
        let cred = AgentCredential::decode_tpm2_tools(&c.to_tpm2_tools_file()).unwrap();
        let got = activate::activate(&mut tpm, ek, &opts, &cred)
            .unwrap_or_else(|e| panic!("{}: agent ActivateCredential failed: {e}", kind.as_str()));
        assert_eq!(got, secret, "{}: activated secret", kind.as_str());
    }
}

#[test]
fn tpm2_tools_activates_server_credentials_rsa2048_p256_p384() {
    let (_ca, dev) = device(2048);
    tpm2_tools_round_trip(&dev, &[EkKind::Rsa2048, EkKind::P256, EkKind::P384]);
}

#[test]
fn tpm2_tools_activates_server_credentials_rsa3072() {
    let (_ca, dev) = device(3072);
    tpm2_tools_round_trip(&dev, &[EkKind::Rsa3072]);
}

#[test]
fn agent_activates_server_credentials_rsa2048_p256_p384() {
    let (_ca, dev) = device(2048);
    agent_round_trip(
        &dev,
        &[AgentEkKind::Rsa2048, AgentEkKind::P256, AgentEkKind::P384],
    );
}

#[test]
fn agent_activates_server_credentials_rsa3072() {
    let (_ca, dev) = device(3072);
    agent_round_trip(&dev, &[AgentEkKind::Rsa3072]);
}
