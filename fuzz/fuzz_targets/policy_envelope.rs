//! Fuzz target `policy_envelope`: the signed policy document envelope decoder
//! (`ekattest_server::config::signed::Envelope::decode`), which reads config-topic payloads
//! from the broker before any signature is checked.
//!
//! Invariants: nothing panics and errors render; an accepted envelope re-encodes to the input
//! byte for byte (one accepted form per envelope, so nothing unsigned can hide in the
//! trailer), its document is a prefix of the input, and verifying it against a pinned key
//! (which did not sign it) fails without panicking.
#![no_main]

use std::sync::OnceLock;

use ekattest_server::config::signed::{Envelope, Signers, SigningKey};
use libfuzzer_sys::fuzz_target;

fn signers() -> &'static Signers {
    static SIGNERS: OnceLock<Signers> = OnceLock::new();
    SIGNERS.get_or_init(|| {
        let (key, _) = SigningKey::generate().expect("key");
        let mut s = Signers::new();
        s.add_pem(key.public_pem().as_bytes()).expect("public key");
        s
    })
}

fuzz_target!(|data: &[u8]| {
    match Envelope::decode(data) {
        Ok(envelope) => {
            assert_eq!(envelope.encode(), data, "decode/encode is not the identity");
            assert!(data.starts_with(envelope.document));
            let _ = format!("{envelope:?}");
            if let Err(e) = signers().verify(&envelope, envelope.cluster) {
                let _ = (e.to_string(), e.reason());
            }
        }
        Err(e) => {
            let _ = (e.to_string(), e.reason());
        }
    }
});
