//! Key certification checks against certifications built in software: a P-256 "AK" signs
//! TPMS_ATTEST structures laid out as a TPM lays them out, so every field can be forged on
//! its own. The same checks against real swtpm certifications are in the fleet crate's
//! `attacks` tests.

use ekattest_protocol::heapless;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};

use super::*;

const QD: [u8; 32] = [0x51; 32];
const AK_ATTRS: u32 = 0x0005_0472;
const KEY_ATTRS: u32 = 0x0004_0472;

fn signing_key(byte: u8) -> SigningKey {
    SigningKey::from_slice(&[byte; 32]).unwrap()
}

/// TPM2B_PUBLIC of an ECC P-256 key with `attrs` and ECDSA-SHA256.
fn ecc_public(key: &SigningKey, attrs: u32) -> Vec<u8> {
    let point = key.verifying_key().to_encoded_point(false);
    let mut t = Vec::new();
    t.extend_from_slice(&[0x00, 0x23, 0x00, 0x0B]);
    t.extend_from_slice(&attrs.to_be_bytes());
    t.extend_from_slice(&[
        0x00, 0x00, 0x00, 0x10, 0x00, 0x18, 0x00, 0x0B, 0x00, 0x03, 0x00, 0x10,
    ]);
    for c in [point.x().unwrap(), point.y().unwrap()] {
        t.extend_from_slice(&[0x00, 0x20]);
        t.extend_from_slice(c);
    }
    let mut v = u16::try_from(t.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(&t);
    v
}

fn spki(key: &SigningKey) -> Vec<u8> {
    let public = ecc_public(key, KEY_ATTRS);
    let p = Public::decode(&public).unwrap();
    let mut buf = [0u8; ekattest_protocol::spki::SPKI_MAX];
    p.key.spki_der(&mut buf).unwrap().to_vec()
}

fn put2b(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&u16::try_from(b.len()).unwrap().to_be_bytes());
    v.extend_from_slice(b);
}

/// The fields of a TPMS_ATTEST a forger controls.
struct Fields {
    magic: u32,
    kind: u16,
    signer: Vec<u8>,
    extra: Vec<u8>,
    name: Vec<u8>,
}

impl Fields {
    /// What the TPM writes for `ak_public` certifying `key_public` with [`QD`].
    fn honest(ak_public: &[u8], key_public: &[u8]) -> Self {
        let ak = Public::decode(ak_public).unwrap();
        Self {
            magic: TPM_GENERATED,
            kind: ST_ATTEST_CERTIFY,
            signer: qualified_names(&ak).unwrap().remove(0),
            extra: QD.to_vec(),
            name: Public::decode(key_public)
                .unwrap()
                .name()
                .unwrap()
                .as_slice()
                .to_vec(),
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.magic.to_be_bytes());
        b.extend_from_slice(&self.kind.to_be_bytes());
        put2b(&mut b, &self.signer);
        put2b(&mut b, &self.extra);
        b.extend_from_slice(&[0x11; 17]); // clockInfo
        b.extend_from_slice(&[0x22; 8]); // firmwareVersion
        put2b(&mut b, &self.name);
        put2b(&mut b, &[0x00, 0x0B, 0x33, 0x33]); // qualifiedName: not checked
        b
    }
}

fn tpmt_signature(signer: &SigningKey, body: &[u8]) -> Vec<u8> {
    let sig: Signature = signer.sign(body);
    let (r, s) = (sig.r().to_bytes(), sig.s().to_bytes());
    let mut v = vec![0x00, 0x18, 0x00, 0x0B];
    put2b(&mut v, &r);
    put2b(&mut v, &s);
    v
}

fn key_certify(public: &[u8], body: &[u8], signature: &[u8]) -> KeyCertify {
    let mut attest = Vec::new();
    put2b(&mut attest, body);
    KeyCertify {
        public: heapless::Vec::from_slice(public).unwrap(),
        attest: heapless::Vec::from_slice(&attest).unwrap(),
        signature: heapless::Vec::from_slice(signature).unwrap(),
    }
}

/// An honest certification: AK 0x01 certifies SVID key 0x02 (attributes `key_attrs`).
struct Case {
    ak_key: SigningKey,
    ak_public: Vec<u8>,
    key: SigningKey,
    key_public: Vec<u8>,
}

impl Case {
    fn new(key_attrs: u32) -> Self {
        let ak_key = signing_key(1);
        let key = signing_key(2);
        Self {
            ak_public: ecc_public(&ak_key, AK_ATTRS),
            key_public: ecc_public(&key, key_attrs),
            ak_key,
            key,
        }
    }

    fn fields(&self) -> Fields {
        Fields::honest(&self.ak_public, &self.key_public)
    }

    fn run(&self, f: &Fields) -> Result<(), CertifyError> {
        let body = f.body();
        let kc = key_certify(
            &self.key_public,
            &body,
            &tpmt_signature(&self.ak_key, &body),
        );
        check(&kc, &self.ak_public, Some(&spki(&self.key)), &QD)
    }
}

#[test]
fn an_honest_certification_passes() {
    let c = Case::new(KEY_ATTRS);
    assert_eq!(c.run(&c.fields()), Ok(()));
}

#[test]
fn a_software_attestation_magic_is_refused() {
    let c = Case::new(KEY_ATTRS);
    let f = Fields {
        magic: 0x1234_5678,
        ..c.fields()
    };
    assert_eq!(c.run(&f), Err(CertifyError::Magic(0x1234_5678)));
}

#[test]
fn a_quote_is_not_a_certification() {
    let c = Case::new(KEY_ATTRS);
    let f = Fields {
        kind: 0x8018,
        ..c.fields()
    };
    assert_eq!(c.run(&f), Err(CertifyError::Type(0x8018)));
}

#[test]
fn another_qualified_signer_is_refused() {
    let c = Case::new(KEY_ATTRS);
    let mut f = c.fields();
    f.signer[5] ^= 1;
    assert_eq!(c.run(&f), Err(CertifyError::Signer));
}

#[test]
fn an_endorsement_hierarchy_ak_is_accepted() {
    let c = Case::new(KEY_ATTRS);
    let ak = Public::decode(&c.ak_public).unwrap();
    let f = Fields {
        signer: qualified_names(&ak).unwrap().remove(1),
        ..c.fields()
    };
    assert_eq!(c.run(&f), Ok(()));
}

#[test]
fn another_logins_qualifying_data_is_refused() {
    let c = Case::new(KEY_ATTRS);
    let f = Fields {
        extra: vec![0x52; 32],
        ..c.fields()
    };
    assert_eq!(c.run(&f), Err(CertifyError::QualifyingData));
    let f = Fields {
        extra: Vec::new(),
        ..c.fields()
    };
    assert_eq!(c.run(&f), Err(CertifyError::QualifyingData));
}

#[test]
fn a_certification_of_another_key_is_refused() {
    // The attestation is honest, for key 0x03; the Login carries key 0x02's public area.
    let c = Case::new(KEY_ATTRS);
    let other = ecc_public(&signing_key(3), KEY_ATTRS);
    let f = Fields::honest(&c.ak_public, &other);
    assert_eq!(c.run(&f), Err(CertifyError::Name));
}

#[test]
fn a_signature_by_another_ak_is_refused() {
    let c = Case::new(KEY_ATTRS);
    let body = c.fields().body();
    let kc = key_certify(
        &c.key_public,
        &body,
        &tpmt_signature(&signing_key(9), &body),
    );
    assert_eq!(
        check(&kc, &c.ak_public, Some(&spki(&c.key)), &QD),
        Err(CertifyError::Signature)
    );
}

#[test]
fn a_signature_in_another_scheme_is_refused() {
    let c = Case::new(KEY_ATTRS);
    let body = c.fields().body();
    let mut sig = tpmt_signature(&c.ak_key, &body);
    sig[3] = 0x0C; // SHA-384: not the AK's scheme
    let kc = key_certify(&c.key_public, &body, &sig);
    assert_eq!(
        check(&kc, &c.ak_public, Some(&spki(&c.key)), &QD),
        Err(CertifyError::Scheme {
            alg: 0x0018,
            hash: 0x000C
        })
    );
}

#[test]
fn each_missing_attribute_is_named() {
    for (bit, name) in [
        (attr::FIXED_TPM, "fixedTPM"),
        (attr::FIXED_PARENT, "fixedParent"),
        (attr::SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (attr::SIGN, "sign"),
    ] {
        let c = Case::new(KEY_ATTRS & !bit);
        assert_eq!(
            c.run(&c.fields()),
            Err(CertifyError::MissingAttribute { attribute: name }),
            "{name}"
        );
    }
}

#[test]
fn restricted_or_decrypt_keys_are_refused() {
    for extra in [attr::RESTRICTED, attr::DECRYPT] {
        let c = Case::new(KEY_ATTRS | extra);
        assert_eq!(c.run(&c.fields()), Err(CertifyError::Usage));
    }
}

#[test]
fn the_svid_key_must_be_the_certified_key() {
    let c = Case::new(KEY_ATTRS);
    let body = c.fields().body();
    let kc = key_certify(&c.key_public, &body, &tpmt_signature(&c.ak_key, &body));
    assert_eq!(
        check(&kc, &c.ak_public, Some(&spki(&signing_key(7))), &QD),
        Err(CertifyError::SvidKeyMismatch)
    );
    assert_eq!(
        check(&kc, &c.ak_public, None, &QD),
        Err(CertifyError::SvidKeyMismatch)
    );
}

#[test]
fn truncations_and_trailing_bytes_are_errors_not_panics() {
    let c = Case::new(KEY_ATTRS);
    let body = c.fields().body();
    let sig = tpmt_signature(&c.ak_key, &body);
    let good = key_certify(&c.key_public, &body, &sig);
    let svid_key = spki(&c.key);
    for cut in 0..good.attest.len() {
        let mut kc = good.clone();
        kc.attest.truncate(cut);
        assert!(
            check(&kc, &c.ak_public, Some(&svid_key), &QD).is_err(),
            "{cut}"
        );
    }
    for cut in 0..sig.len() {
        let mut kc = good.clone();
        kc.signature.truncate(cut);
        assert!(
            check(&kc, &c.ak_public, Some(&svid_key), &QD).is_err(),
            "{cut}"
        );
    }
    let mut kc = good.clone();
    kc.signature.push(0).unwrap();
    assert_eq!(
        check(&kc, &c.ak_public, Some(&svid_key), &QD),
        Err(CertifyError::Malformed("bytes after the signature"))
    );
    let mut kc = good;
    kc.attest.push(0).unwrap();
    assert_eq!(
        check(&kc, &c.ak_public, Some(&svid_key), &QD),
        Err(CertifyError::Malformed("bytes after the TPM2B_ATTEST"))
    );
}

#[test]
fn ecdsa_der_is_minimal() {
    assert_eq!(
        ecdsa_der(&[0x01], &[0x80]),
        vec![0x30, 0x07, 0x02, 0x01, 0x01, 0x02, 0x02, 0x00, 0x80]
    );
    assert_eq!(
        ecdsa_der(&[0x00, 0x00, 0x05], &[0x7F]),
        vec![0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x7F]
    );
}
