//! Signer, Challenge, Result and SVID checks on certificates made by the openssl CLI (an
//! independent encoder), with signatures made by p256.

use std::os::unix::fs::PermissionsExt as _;

use ekattest_protocol::heapless;
use ekattest_protocol::msg::{Attribute, AttributeName, Challenge};
use ekattest_testkit::testdata::{self, openssl};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::der::pem::LineEnding;
use p256::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};

use super::*;

/// The agent's SVID key holding the same private key as `key` (p256's).
fn svid(key: &SigningKey) -> SvidKey {
    SvidKey::from_pkcs8_der(key.to_pkcs8_der().unwrap().as_bytes()).unwrap()
}

fn key(seed: u8) -> SigningKey {
    let mut bytes = [seed; 32];
    bytes[0] = 1;
    SigningKey::from_slice(&bytes).unwrap()
}

/// A self-signed P-256 CA made by openssl from a p256 key.
struct TestCa {
    key: SigningKey,
    name: &'static str,
}

impl TestCa {
    fn new(dir: &Path, seed: u8, name: &'static str) -> Self {
        let key = key(seed);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), pem.as_bytes()).unwrap();
        testdata::openssl_self_signed(
            dir,
            name,
            &format!("/CN={name}"),
            &["-addext", "basicConstraints=critical,CA:TRUE"],
        );
        Self { key, name }
    }

    /// An intermediate CA this CA issues as `ekattestctl ca issue-signer` does (CA:TRUE
    /// pathlen 0, digitalSignature, keyCertSign, serverAuth, clientAuth and, if
    /// `signer_usage`, the ekattest signer usage); `ca` false makes it a leaf (CA:FALSE).
    fn issue_signer(
        &self,
        dir: &Path,
        seed: u8,
        name: &'static str,
        signer_usage: bool,
        ca: bool,
    ) -> Self {
        let key = key(seed);
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), pem.as_bytes()).unwrap();
        let spki = svid(&key).spki_der().unwrap();
        let pub_pem =
            p256::pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, &spki).unwrap();
        std::fs::write(dir.join(format!("{name}-pub.pem")), pub_pem).unwrap();
        let eku = if signer_usage {
            format!("serverAuth,clientAuth,{}", sign::SIGNER_EKU_OID)
        } else {
            "serverAuth,clientAuth".to_owned()
        };
        let basic = if ca { "CA:TRUE,pathlen:0" } else { "CA:FALSE" };
        std::fs::write(
            dir.join(format!("{name}.cnf")),
            format!(
                "basicConstraints=critical,{basic}\n\
                 keyUsage=critical,digitalSignature,keyCertSign\n\
                 extendedKeyUsage={eku}\n"
            ),
        )
        .unwrap();
        testdata::openssl_issue(dir, self.name, name, &format!("/O=ekattest/CN={name}"));
        Self { key, name }
    }

    /// The certificate, DER.
    fn der(&self, dir: &Path) -> Vec<u8> {
        openssl(
            dir,
            &[
                "x509",
                "-in",
                &format!("{}.pem", self.name),
                "-outform",
                "DER",
            ],
        )
    }

    /// This certificate as the signer `bundle` accepts now.
    fn signer(&self, dir: &Path, bundle: &TrustBundle) -> Signer {
        bundle.signer(&self.der(dir), unix_now()).unwrap()
    }

    /// An SVID for `spki` with URI SANs `uris`, valid one day, DER.
    fn issue(&self, dir: &Path, spki: &[u8], uris: &[&str]) -> Vec<u8> {
        let pem = p256::pkcs8::der::pem::encode_string("PUBLIC KEY", LineEnding::LF, spki).unwrap();
        std::fs::write(dir.join("pub.pem"), pem).unwrap();
        let sans: Vec<String> = uris.iter().map(|u| format!("URI:{u}")).collect();
        let ext = if sans.is_empty() {
            "keyUsage=critical,digitalSignature\n".to_owned()
        } else {
            format!("subjectAltName=critical,{}\n", sans.join(","))
        };
        std::fs::write(dir.join("ext.cnf"), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-new",
                "-subj",
                "/O=ekattest",
                "-force_pubkey",
                "pub.pem",
                "-CA",
                &format!("{}.pem", self.name),
                "-CAkey",
                &format!("{}.key", self.name),
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-outform",
                "DER",
                "-out",
                "svid.der",
            ],
        );
        std::fs::read(dir.join("svid.der")).unwrap()
    }

    fn sign(&self, agent: &str, session: &SessionId, accepted: &mut Accepted) {
        self.sign_for(agent, session, &T, accepted);
    }

    fn sign_for(&self, agent: &str, session: &SessionId, t: &Transcript, accepted: &mut Accepted) {
        let msg = sign::result_signed_bytes(agent, session, t, accepted).unwrap();
        let sig: Signature = self.key.sign(&msg);
        accepted.signature = heapless::Vec::from_slice(sig.to_der().as_bytes()).unwrap();
    }

    fn sign_challenge(&self, agent: &str, c: &mut Challenge) {
        let msg = sign::challenge_signed_bytes(agent, c).unwrap();
        let sig: Signature = self.key.sign(&msg);
        c.signature = heapless::Vec::from_slice(sig.to_der().as_bytes()).unwrap();
    }

    fn bundle(&self, dir: &Path) -> TrustBundle {
        TrustBundle::load(&dir.join(format!("{}.pem", self.name))).unwrap()
    }
}

const SPIFFE: &str = "spiffe://td.example/tpm/ab12";
const AGENT: &str = "ek-0123";
const SESSION: SessionId = SessionId([5; 16]);
/// The Login transcript the Results answer.
const T: Transcript = [0x7c; 32];

fn accepted(svid: &[u8]) -> Accepted {
    let mut attributes = heapless::Vec::new();
    attributes
        .push(Attribute {
            name: AttributeName::PublicHash,
            value: heapless::String::try_from("ab12").unwrap(),
        })
        .unwrap();
    Accepted {
        spiffe_id: heapless::String::try_from(SPIFFE).unwrap(),
        attributes,
        svid: heapless::Vec::from_slice(svid).unwrap(),
        signature: heapless::Vec::new(),
    }
}

struct Setup {
    dir: tempfile::TempDir,
    ca: TestCa,
    ours: SvidKey,
    spki: Vec<u8>,
    good: Accepted,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), 0x11, "ca");
    let ours = svid(&key(0x22));
    let spki = ours.spki_der().unwrap();
    let mut good = accepted(&ca.issue(dir.path(), &spki, &[SPIFFE]));
    ca.sign(AGENT, &SESSION, &mut good);
    Setup {
        dir,
        ca,
        ours,
        spki,
        good,
    }
}

#[test]
fn good_result_verifies() {
    let s = setup();
    let bundle = s.ca.bundle(s.dir.path());
    assert_eq!(bundle.len(), 1);
    let signer = s.ca.signer(s.dir.path(), &bundle);
    assert!(signer.is_anchor());
    let v = verify_result(&signer, AGENT, &SESSION, &T, &s.good, &s.spki, unix_now()).unwrap();
    assert_eq!(v.spiffe_id, SPIFFE);
    assert_eq!(v.svid, s.good.svid.as_slice());
    assert!(v.chain.is_empty(), "a bundle CA's SVID needs no chain");
    // openssl -days 1: notAfter is exactly one day after notBefore, which is about now.
    assert_eq!(v.not_after - v.not_before, 86_400);
    assert!((v.not_before - unix_now()).abs() < 120, "{}", v.not_before);
    assert_eq!(s.spki.len(), 91);
}

fn unix_now() -> i64 {
    super::super::unix_now()
}

fn check(s: &Setup, agent: &str, session: &SessionId, a: &Accepted, now: i64) -> String {
    check_t(s, agent, session, &T, a, now)
}

fn check_t(
    s: &Setup,
    agent: &str,
    session: &SessionId,
    t: &Transcript,
    a: &Accepted,
    now: i64,
) -> String {
    let bundle = s.ca.bundle(s.dir.path());
    let signer = s.ca.signer(s.dir.path(), &bundle);
    verify_result(&signer, agent, session, t, a, &s.spki, now)
        .unwrap_err()
        .to_string()
}

/// The error of a Result whose signature is not the signer's.
const NOT_SIGNED: &str = "not signed by the server that signed the Challenge";

#[test]
fn result_for_another_agent_session_or_transcript_is_refused() {
    let s = setup();
    let now = unix_now();
    let e = check(&s, "ek-other", &SESSION, &s.good, now);
    assert!(e.contains(NOT_SIGNED), "{e}");
    let e = check(&s, AGENT, &SessionId([6; 16]), &s.good, now);
    assert!(e.contains(NOT_SIGNED), "{e}");
    let e = check_t(&s, AGENT, &SESSION, &[0x7d; 32], &s.good, now);
    assert!(e.contains(NOT_SIGNED), "{e}");
    let mut bad = s.good.clone();
    bad.signature = heapless::Vec::from_slice(&[0x30, 0x02, 0x01]).unwrap();
    let e = check(&s, AGENT, &SESSION, &bad, now);
    assert!(e.contains(NOT_SIGNED), "{e}");
    let mut other_id = s.good.clone();
    other_id.spiffe_id = heapless::String::try_from("spiffe://td.example/x").unwrap();
    let e = check(&s, AGENT, &SESSION, &other_id, now);
    assert!(e.contains(NOT_SIGNED), "{e}");
    // Signed for another transcript: refused with ours, accepted with that one.
    let mut other_t = s.good.clone();
    s.ca.sign_for(AGENT, &SESSION, &[0x7d; 32], &mut other_t);
    let e = check(&s, AGENT, &SESSION, &other_t, now);
    assert!(e.contains(NOT_SIGNED), "{e}");
    let bundle = s.ca.bundle(s.dir.path());
    let signer = s.ca.signer(s.dir.path(), &bundle);
    verify_result(
        &signer,
        AGENT,
        &SESSION,
        &[0x7d; 32],
        &other_t,
        &s.spki,
        now,
    )
    .unwrap();
}

#[test]
fn tampered_svid_is_refused_even_with_a_fresh_result_signature() {
    let s = setup();
    let mut tampered = s.good.clone();
    // A byte inside the subject O=ekattest.
    let at = tampered
        .svid
        .windows(8)
        .position(|w| w == b"ekattest")
        .unwrap();
    tampered.svid[at] ^= 0x20;
    s.ca.sign(AGENT, &SESSION, &mut tampered);
    let e = check(&s, AGENT, &SESSION, &tampered, unix_now());
    assert!(e.contains("signature does not verify with the CA"), "{e}");
}

#[test]
fn svid_for_another_key_or_id_is_refused() {
    let s = setup();
    let dir = s.dir.path();
    let other = svid(&key(0x33)).spki_der().unwrap();
    let mut a = accepted(&s.ca.issue(dir, &other, &[SPIFFE]));
    s.ca.sign(AGENT, &SESSION, &mut a);
    let e = check(&s, AGENT, &SESSION, &a, unix_now());
    assert!(e.contains("certifies another public key"), "{e}");

    let mut a = accepted(&s.ca.issue(dir, &s.spki, &["spiffe://td.example/other"]));
    s.ca.sign(AGENT, &SESSION, &mut a);
    let e = check(&s, AGENT, &SESSION, &a, unix_now());
    assert!(e.contains("differs from the Result's SPIFFE ID"), "{e}");

    let mut a = accepted(&s.ca.issue(dir, &s.spki, &[SPIFFE, "spiffe://td.example/2"]));
    s.ca.sign(AGENT, &SESSION, &mut a);
    let e = check(&s, AGENT, &SESSION, &a, unix_now());
    assert!(e.contains("exactly one URI SAN"), "{e}");

    let mut a = accepted(&s.ca.issue(dir, &s.spki, &[]));
    s.ca.sign(AGENT, &SESSION, &mut a);
    let e = check(&s, AGENT, &SESSION, &a, unix_now());
    assert!(e.contains("exactly one URI SAN"), "{e}");
}

#[test]
fn svid_signed_by_another_ca_is_refused() {
    let s = setup();
    let dir = s.dir.path();
    let rogue = TestCa::new(dir, 0x44, "rogue");
    let mut a = accepted(&rogue.issue(dir, &s.spki, &[SPIFFE]));
    // The Result itself is signed by the trusted CA: only the SVID is foreign.
    s.ca.sign(AGENT, &SESSION, &mut a);
    let e = check(&s, AGENT, &SESSION, &a, unix_now());
    assert!(e.contains("signature does not verify with the CA"), "{e}");
    // Entirely from the rogue CA: the Result signature already fails.
    rogue.sign(AGENT, &SESSION, &mut a);
    let e = check(&s, AGENT, &SESSION, &a, unix_now());
    assert!(e.contains(NOT_SIGNED), "{e}");
    // The rogue is no signer of this bundle.
    let e =
        s.ca.bundle(dir)
            .signer(&rogue.der(dir), unix_now())
            .unwrap_err()
            .to_string();
    assert!(e.contains("not issued by a CA of the trust bundle"), "{e}");
    // With both CAs in the bundle, the rogue is a signer and its SVID is fine (it is trusted
    // then); the trusted CA's signer refuses it still.
    let both = [
        std::fs::read(dir.join("ca.pem")).unwrap(),
        std::fs::read(dir.join("rogue.pem")).unwrap(),
    ]
    .concat();
    let bundle = TrustBundle::from_pem(both, Path::new("both.pem")).unwrap();
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle.default_hint(), None);
    assert!(bundle.single_anchor().is_none());
    let signer = rogue.signer(dir, &bundle);
    assert!(signer.is_anchor());
    verify_result(&signer, AGENT, &SESSION, &T, &a, &s.spki, unix_now()).unwrap();
    let e = verify_result(
        &s.ca.signer(dir, &bundle),
        AGENT,
        &SESSION,
        &T,
        &a,
        &s.spki,
        unix_now(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(NOT_SIGNED), "{e}");
}

#[test]
fn expired_or_future_svid_is_refused() {
    let s = setup();
    let bundle = s.ca.bundle(s.dir.path());
    let v = verify_result(
        &s.ca.signer(s.dir.path(), &bundle),
        AGENT,
        &SESSION,
        &T,
        &s.good,
        &s.spki,
        unix_now(),
    )
    .unwrap();
    let e = check(&s, AGENT, &SESSION, &s.good, v.not_after + 1);
    assert!(e.contains("check the device clock"), "{e}");
    let e = check(&s, AGENT, &SESSION, &s.good, v.not_before - 1);
    assert!(e.contains("check the device clock"), "{e}");
}

#[test]
fn bundle_without_p256_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = TrustBundle::from_pem(b"not pem".to_vec(), Path::new("x.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no P-256 CA certificate"), "{e}");
    openssl(
        dir.path(),
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-subj",
            "/CN=rsa", "-days", "1", "-out", "rsa.pem",
        ],
    );
    let e = TrustBundle::load(&dir.path().join("rsa.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("certificate 1: its key is not P-256"), "{e}");
    let e = TrustBundle::load(&dir.path().join("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.pem"), "{e}");
}

#[test]
fn x509_walker_reads_openssl_certificates() {
    let s = setup();
    let ca_der = openssl(s.dir.path(), &["x509", "-in", "ca.pem", "-outform", "DER"]);
    let ca = x509::parse(&ca_der).unwrap();
    assert_eq!(ca.uri_sans, 0);
    assert_eq!(ca.issuer, ca.subject);
    assert_eq!(ca.signature_algorithm, x509::ECDSA_WITH_SHA256);
    assert_eq!(ca.not_after - ca.not_before, 2 * 86_400);
    let svid = x509::parse(&s.good.svid).unwrap();
    assert_eq!(svid.uri_san, Some(SPIFFE));
    assert_eq!(svid.spki, s.spki.as_slice());
    assert_eq!(svid.issuer, ca.subject);
    // Every truncation and every single-byte corruption errors or parses; none panics.
    for n in 0..s.good.svid.len() {
        assert!(x509::parse(&s.good.svid[..n]).is_err());
    }
    for i in 0..s.good.svid.len() {
        let mut bad = s.good.svid.to_vec();
        bad[i] ^= 0xff;
        let _ = x509::parse(&bad);
    }
}

#[test]
fn files_are_written_atomically_with_a_private_key_file() {
    let s = setup();
    let data = s.dir.path().join("data");
    let bundle = s.ca.bundle(s.dir.path());
    write_identity(
        &data,
        &s.good.svid,
        &[],
        &s.ours.pkcs8_pem().unwrap(),
        bundle.pem(),
    )
    .unwrap();
    let mode = |name: &str| {
        std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(SVID_KEY), 0o600);
    assert_eq!(mode("."), 0o700);
    assert_eq!(mode(SVID_PEM) & 0o077 & !0o044, 0);
    let der = openssl(&data, &["x509", "-in", SVID_PEM, "-outform", "DER"]);
    assert_eq!(der, s.good.svid.as_slice());
    let pem = std::fs::read(data.join(SVID_PEM)).unwrap();
    assert_eq!(CertificateDer::pem_slice_iter(&pem).count(), 1);
    let pem = std::fs::read_to_string(data.join(SVID_KEY)).unwrap();
    let back = SigningKey::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(
        back.verifying_key().to_encoded_point(false).as_bytes(),
        s.ours.signing_key().public_point()
    );
    assert_eq!(std::fs::read(data.join(BUNDLE_PEM)).unwrap(), bundle.pem());

    // Replacing a world-readable key file leaves a 0600 one, and no temporary files.
    std::fs::set_permissions(data.join(SVID_KEY), std::fs::Permissions::from_mode(0o644)).unwrap();
    write_identity(
        &data,
        &s.good.svid,
        &[],
        &s.ours.pkcs8_pem().unwrap(),
        bundle.pem(),
    )
    .unwrap();
    assert_eq!(mode(SVID_KEY), 0o600);
    let mut names: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [BUNDLE_PEM, SVID_KEY, SVID_PEM]);

    let e = write_atomic(Path::new("/proc/no-such"), "x", b"", 0o600)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/proc/no-such/x"), "{e}");
}

/// A Challenge to [`AGENT`] naming `t`, signed by `by`.
fn challenge(by: &TestCa, t: &Transcript) -> Challenge {
    let mut c = Challenge {
        session: SESSION,
        node: heapless::String::try_from("node-1").unwrap(),
        credential_blob: heapless::Vec::from_slice(&[0, 2, 0xaa, 0xbb]).unwrap(),
        encrypted_secret: heapless::Vec::from_slice(&[0, 2, 0xcc, 0xdd]).unwrap(),
        expires_in: 300,
        transcript: *t,
        signer: heapless::Vec::new(),
        signature: heapless::Vec::new(),
    };
    by.sign_challenge(AGENT, &mut c);
    c
}

#[test]
fn challenge_verifies_only_signed_by_the_signer_for_our_transcript() {
    let s = setup();
    let dir = s.dir.path();
    let bundle = s.ca.bundle(dir);
    let signer = s.ca.signer(dir, &bundle);
    let now = unix_now();
    let good = challenge(&s.ca, &T);
    signer.verify_challenge(AGENT, &good, &T, now).unwrap();
    // The signer and signature fields are not covered: a carried certificate changes nothing.
    let mut carried = good.clone();
    carried.signer = heapless::Vec::from_slice(&s.ca.der(dir)).unwrap();
    signer.verify_challenge(AGENT, &carried, &T, now).unwrap();

    let refused = |c: &Challenge, agent: &str, own: &Transcript| {
        signer
            .verify_challenge(agent, c, own, now)
            .unwrap_err()
            .to_string()
    };
    // Another Login's transcript, validly signed: a replayed or relayed Challenge.
    let e = refused(&challenge(&s.ca, &[0x7d; 32]), AGENT, &T);
    assert!(e.contains("made for another Login"), "{e}");
    // Signed for another agent.
    let e = refused(&good, "ek-other", &T);
    assert!(e.contains("does not verify with the signer's key"), "{e}");
    // Absent, malformed, altered signatures; a field changed after signing.
    let mut absent = good.clone();
    absent.signature.clear();
    let e = refused(&absent, AGENT, &T);
    assert!(e.contains("not a DER ECDSA signature"), "{e}");
    let mut flipped = good.clone();
    let last = flipped.signature.len() - 1;
    flipped.signature[last] ^= 1;
    let e = refused(&flipped, AGENT, &T);
    assert!(
        e.contains("does not verify") || e.contains("not a DER ECDSA"),
        "{e}"
    );
    let mut altered = good.clone();
    altered.credential_blob[2] ^= 1;
    let e = refused(&altered, AGENT, &T);
    assert!(e.contains("does not verify with the signer's key"), "{e}");
    let mut moved = good.clone();
    moved.transcript = [0x7d; 32];
    let e = refused(&moved, AGENT, &[0x7d; 32]);
    assert!(e.contains("does not verify with the signer's key"), "{e}");
    // Signed by another key (a rogue's self-signed CA): not this signer's.
    let rogue = TestCa::new(dir, 0x44, "rogue");
    let e = refused(&challenge(&rogue, &T), AGENT, &T);
    assert!(e.contains("does not verify with the signer's key"), "{e}");
    // A signer outside its validity is refused before anything else.
    let expired = signer
        .verify_challenge(AGENT, &good, &T, now + 3 * 86_400)
        .unwrap_err()
        .to_string();
    assert!(expired.contains("check the device clock"), "{expired}");
}

#[test]
fn bundle_hints_its_single_ca() {
    let s = setup();
    let dir = s.dir.path();
    let bundle = s.ca.bundle(dir);
    let der = s.ca.der(dir);
    assert_eq!(bundle.single_anchor(), Some(der.as_slice()));
    assert_eq!(bundle.default_hint(), Some(sign::signer_hint(&der)));
    let signer = bundle.signer(&der, unix_now()).unwrap();
    assert_eq!(signer.hint(), sign::signer_hint(&der));
    assert_eq!(signer.der(), der.as_slice());
}

#[test]
fn intermediate_signer_with_the_signer_usage_is_accepted_and_chained() {
    let s = setup();
    let dir = s.dir.path();
    let bundle = s.ca.bundle(dir);
    let mid = s.ca.issue_signer(dir, 0x55, "signer", true, true);
    let mid_der = mid.der(dir);
    let parsed = x509::parse(&mid_der).unwrap();
    assert!(parsed.is_ca && parsed.signer_usage);
    let root_der = s.ca.der(dir);
    let root = x509::parse(&root_der).unwrap();
    assert!(root.is_ca && !root.signer_usage);
    assert!(!x509::parse(&s.good.svid).unwrap().is_ca);

    let signer = bundle.signer(&mid_der, unix_now()).unwrap();
    assert!(!signer.is_anchor());
    assert_eq!(signer.hint(), sign::signer_hint(&mid_der));
    assert_ne!(Some(signer.hint()), bundle.default_hint());
    signer
        .verify_challenge(AGENT, &challenge(&mid, &T), &T, unix_now())
        .unwrap();
    // The root's signature is not the intermediate's.
    let e = signer
        .verify_challenge(AGENT, &challenge(&s.ca, &T), &T, unix_now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not verify with the signer's key"), "{e}");

    // An SVID the intermediate issued and a Result it signed verify, with the intermediate
    // as the chain; an SVID the root issued under the intermediate's Result does not.
    let mut a = accepted(&mid.issue(dir, &s.spki, &[SPIFFE]));
    mid.sign(AGENT, &SESSION, &mut a);
    let v = verify_result(&signer, AGENT, &SESSION, &T, &a, &s.spki, unix_now()).unwrap();
    assert_eq!(v.chain, mid_der);
    let mut by_root = s.good.clone();
    mid.sign(AGENT, &SESSION, &mut by_root);
    let e = verify_result(&signer, AGENT, &SESSION, &T, &by_root, &s.spki, unix_now())
        .unwrap_err()
        .to_string();
    assert!(e.contains("signature does not verify with the CA"), "{e}");

    // svid.pem holds the SVID, then the intermediate; openssl builds the chain to the root.
    let data = dir.join("data");
    write_identity(
        &data,
        &v.svid,
        &v.chain,
        &s.ours.pkcs8_pem().unwrap(),
        bundle.pem(),
    )
    .unwrap();
    let pem = std::fs::read(data.join(SVID_PEM)).unwrap();
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.unwrap().to_vec())
        .collect();
    assert_eq!(certs, [v.svid.clone(), mid_der]);
    let out = openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "data/svid.pem",
            "data/svid.pem",
        ],
    );
    assert!(String::from_utf8_lossy(&out).contains("OK"));
}

#[test]
fn intermediate_without_the_signer_usage_or_ca_or_from_another_ca_is_refused() {
    let s = setup();
    let dir = s.dir.path();
    let bundle = s.ca.bundle(dir);
    let now = unix_now();
    let refused = |der: &[u8]| bundle.signer(der, now).unwrap_err().to_string();

    let no_eku = s.ca.issue_signer(dir, 0x55, "no-eku", false, true);
    let der = no_eku.der(dir);
    assert!(!x509::parse(&der).unwrap().signer_usage);
    let e = refused(&der);
    assert!(e.contains("lacks the ekattest signer usage"), "{e}");
    assert!(e.contains(sign::SIGNER_EKU_OID), "{e}");

    let leaf = s.ca.issue_signer(dir, 0x56, "leaf", true, false);
    let e = refused(&leaf.der(dir));
    assert!(e.contains("not a CA certificate"), "{e}");

    let rogue = TestCa::new(dir, 0x44, "rogue");
    let e = refused(&rogue.der(dir));
    assert!(e.contains("not issued by a CA of the trust bundle"), "{e}");
    let rogue_mid = rogue.issue_signer(dir, 0x57, "rogue-mid", true, true);
    let e = refused(&rogue_mid.der(dir));
    assert!(e.contains("not issued by a CA of the trust bundle"), "{e}");

    // A tampered intermediate (its subject edited after issuance) fails its signature.
    let mut tampered = no_eku.der(dir);
    let at = tampered.windows(8).position(|w| w == b"ekattest").unwrap();
    tampered[at] ^= 0x20;
    let e = refused(&tampered);
    assert!(e.contains("not issued by a CA of the trust bundle"), "{e}");
    let e = refused(b"not a certificate");
    assert!(e.contains("malformed certificate"), "{e}");
}
