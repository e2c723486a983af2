//! Fuzz target `tpm_public`: TPM2B_PUBLIC parsing, Names and SubjectPublicKeyInfo
//! (`ekattest_protocol::tpm::public`, `ekattest_protocol::spki`), on the same bytes read both
//! ways.
//!
//! Invariants, for `Public::decode`: the input is exactly one TPM2B (size prefix = length - 2,
//! `tpmt_bytes` is the rest) and `decode_tpmt` of it gives the same area; `name()` is
//! nameAlg || digest of the right length, or an error for SHA-1; when the key has a canonical
//! SPKI, it parses back to the same key, re-encodes to the same bytes (a fixed point) and
//! `public_hash` is its SHA-256. For `PublicKey::from_spki_der`: a parsed key re-encodes, and
//! that encoding parses to the same key.
#![no_main]

use ekattest_protocol::spki::{PublicKey, SPKI_MAX};
use ekattest_protocol::tpm::public::{HashAlg, Public};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

/// Checks the canonical SPKI of `key`; returns whether it had one.
fn check_spki(key: &PublicKey<'_>) -> bool {
    let mut buf = [0u8; SPKI_MAX];
    let Ok(der) = key.spki_der(&mut buf) else {
        assert!(key.public_hash().is_err(), "public_hash without spki_der");
        return false;
    };
    let back = PublicKey::from_spki_der(der)
        .unwrap_or_else(|e| panic!("canonical SPKI does not parse back: {e}"));
    assert!(
        back.same_key(key) && key.same_key(&back),
        "SPKI changed the key"
    );
    let mut again = [0u8; SPKI_MAX];
    let again = back
        .spki_der(&mut again)
        .unwrap_or_else(|e| panic!("re-parsed key has no SPKI: {e}"));
    assert_eq!(again, der, "canonical SPKI is not a fixed point");
    let hash = key
        .public_hash()
        .unwrap_or_else(|e| panic!("spki_der ok, public_hash: {e}"));
    assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(der)));
    true
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Public::decode(data) {
        let size = usize::from(u16::from_be_bytes([data[0], data[1]]));
        assert_eq!(size + 2, data.len());
        assert_eq!(p.tpmt_bytes(), &data[2..]);
        assert_eq!(Public::decode_tpmt(p.tpmt_bytes()), Ok(p));
        match p.name() {
            Ok(name) => {
                assert_eq!(name.len(), 2 + p.name_alg.digest_len());
                assert_eq!(name[..2], p.name_alg.id().to_be_bytes());
            }
            Err(_) => assert_eq!(
                p.name_alg,
                HashAlg::Sha1,
                "name() failed for {:?}",
                p.name_alg
            ),
        }
        check_spki(&p.key);
    }
    if let Ok(key) = PublicKey::from_spki_der(data) {
        // Any key read from an SPKI has a canonical SPKI (from_spki_der runs the same key
        // checks as spki_der).
        assert!(
            check_spki(&key),
            "a key read from an SPKI has no canonical SPKI: {key:?}"
        );
    }
});
