//! Full EK attestation cost next to the cost of its asymmetric operations alone.
//!
//! `cargo bench -p ekattest-server --bench attest`. One group per EK type:
//! - `full`: what the server does for a Login before it can send the Challenge:
//!   [`ek::validate`] (parse the EK certificate, compare it with the EK public area, build and
//!   verify a path of two signatures to the configured root, TCG profile, attributes), the AK
//!   check, parsing the EK public area and MakeCredential (production path).
//! - `asymmetric_only`: the two signature verifications of that path with pre-parsed aws-lc
//!   keys and prepared signed bytes, plus the MakeCredential asymmetric step (RSA-OAEP encrypt
//!   with a pre-parsed key, or ECDH: ephemeral key, its point, agreement).
//!
//! - `validate_only`: [`ek::validate`] alone, to split `full` between validation and
//!   MakeCredential.
//! - `asymmetric_only_fresh_ek`: as `asymmetric_only` but the EK key is imported each time,
//!   since every Login brings an EK the server has not seen (CA keys stay parsed).
//!
//! Target: `full` within 1.25x of `asymmetric_only`. Chains: RSA-2048 = the real STMicro EK
//! certificate -> STM_RSA_05I -> STM_RSA_RT (2 RSA-2048 PKCS#1 SHA-256 signatures); P-256 and
//! P-384 = an all-ECDSA chain of the same curve (root -> intermediate -> EK, TCG EK profile
//! fields, ecdsa-with-SHA256 / SHA384) generated once with openssl into a temp dir.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, UnparsedPublicKey};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    VerificationAlgorithm,
};
use criterion::{Criterion, criterion_group, criterion_main};
use ekattest_protocol::public::{Public, PublicKey, SPKI_MAX};
use ekattest_server::ak::check_ak;
use ekattest_server::credential::{SystemRandom, make_credential};
use ekattest_server::ek::{self, ChainOptions, EkPolicy, Evidence, ProfileMode, TrustStore};
use x509_parser::prelude::{FromDer, X509Certificate};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata");

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("bench input {path} is missing: {e}"))
}

fn pem_der(path: &str) -> Vec<u8> {
    pem::parse(read(path)).unwrap().into_contents()
}

/// TPM2B_PUBLIC of an EK: TCG L-1 (RSA-2048), L-2 (P-256) or swtpm's H-3 style P-384.
fn ek_public(key: &PublicKey<'_>) -> Vec<u8> {
    let strip = |b: &[u8]| b[b.iter().position(|&v| v != 0).unwrap_or(b.len())..].to_vec();
    let mut t = Vec::new();
    let put =
        |t: &mut Vec<u8>, v: &[u16]| v.iter().for_each(|x| t.extend_from_slice(&x.to_be_bytes()));
    let put2b = |t: &mut Vec<u8>, b: &[u8]| {
        t.extend_from_slice(&u16::try_from(b.len()).unwrap().to_be_bytes());
        t.extend_from_slice(b);
    };
    match *key {
        PublicKey::Rsa { modulus, .. } => {
            let n = strip(modulus);
            put(&mut t, &[0x0001, 0x000B]);
            t.extend_from_slice(&0x0003_00B2u32.to_be_bytes());
            put2b(&mut t, &[0x5A; 32]);
            put(
                &mut t,
                &[
                    0x0006,
                    128,
                    0x0043,
                    0x0010,
                    u16::try_from(n.len() * 8).unwrap(),
                ],
            );
            t.extend_from_slice(&0u32.to_be_bytes());
            put2b(&mut t, &n);
        }
        PublicKey::Ecc { curve, x, y } => {
            let p384 = curve.field_len() == 48;
            put(&mut t, &[0x0023, if p384 { 0x000C } else { 0x000B }]);
            t.extend_from_slice(&(if p384 { 0x0003_00F2u32 } else { 0x0003_00B2 }).to_be_bytes());
            put2b(&mut t, &vec![0x5A; if p384 { 48 } else { 32 }]);
            let bits = if p384 { 256 } else { 128 };
            put(&mut t, &[0x0006, bits, 0x0043, 0x0010, curve.id(), 0x0010]);
            put2b(&mut t, x);
            put2b(&mut t, y);
        }
    }
    let mut out = u16::try_from(t.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

/// The signature check of `child` under `issuer`, prepared: key parsed, bytes extracted.
struct Signed {
    key: ParsedPublicKey,
    tbs: Vec<u8>,
    sig: Vec<u8>,
}

fn signed(alg: &'static dyn VerificationAlgorithm, child: &[u8], issuer: &[u8]) -> Signed {
    let (_, c) = X509Certificate::from_der(child).unwrap();
    let (_, i) = X509Certificate::from_der(issuer).unwrap();
    let key =
        ParsedPublicKey::new(alg, &i.tbs_certificate.subject_pki.subject_public_key.data).unwrap();
    let s = Signed {
        key,
        tbs: c.tbs_certificate.as_ref().to_vec(),
        sig: c.signature_value.data.to_vec(),
    };
    s.key.verify_sig(&s.tbs, &s.sig).unwrap();
    s
}

struct Case {
    name: &'static str,
    policy: EkPolicy,
    leaf: Vec<u8>,
    ek_public: Vec<u8>,
    signatures: [Signed; 2],
    now: SystemTime,
}

fn policy(root: Vec<u8>, intermediate: Vec<u8>) -> EkPolicy {
    EkPolicy {
        trust: Some(
            TrustStore::new(vec![root], vec![intermediate], ChainOptions::default()).unwrap(),
        ),
        profile: ProfileMode::Enforce,
        ..EkPolicy::default()
    }
}

fn stm_case() -> Case {
    let leaf = read(&format!(
        "{TESTDATA}/real-ek/leaf/stm-st33htphahb4-rsa2048.der"
    ));
    let inter = pem_der(&format!("{TESTDATA}/real-ek/ca/STM_RSA_05I.pem"));
    let root = pem_der(&format!("{TESTDATA}/real-ek/ca/STM_RSA_RT.pem"));
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let key = PublicKey::from_spki_der(cert.tbs_certificate.subject_pki.raw).unwrap();
    Case {
        name: "rsa2048_stm",
        ek_public: ek_public(&key),
        signatures: [
            signed(&RSA_PKCS1_2048_8192_SHA256, &leaf, &inter),
            signed(&RSA_PKCS1_2048_8192_SHA256, &inter, &root),
        ],
        policy: policy(root, inter),
        leaf,
        // Inside every STM certificate's validity period (as the ek_chain bench).
        now: UNIX_EPOCH + Duration::from_secs(1_717_200_000),
    }
}

const OPENSSL_EXT: &str = "\
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ek]
basicConstraints = critical,CA:FALSE
keyUsage = critical,keyAgreement
extendedKeyUsage = 2.23.133.8.1
subjectAltName = critical,dirName:tpm_dn
authorityKeyIdentifier = keyid
# openssl drops the text up to the first '.' of a dirName field name (it numbers repeats),
# hence the 1. / 2. / 3. prefixes before the TCG OIDs.
[tpm_dn]
1.2.23.133.2.1 = id:00001014
2.2.23.133.2.2 = swtpm
3.2.23.133.2.3 = id:20191023
";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed to make the ECC bench chain: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// root -> intermediate -> EK, all on `curve` (P-256 or P-384) with the matching SHA.
fn ecc_case(dir: &Path, curve: &str) -> Case {
    let (md, alg, name): (_, &'static dyn VerificationAlgorithm, _) = match curve {
        "P-256" => ("-sha256", &ECDSA_P256_SHA256_ASN1, "p256_openssl"),
        _ => ("-sha384", &ECDSA_P384_SHA384_ASN1, "p384_openssl"),
    };
    let d = dir.join(curve);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("ext.cnf"), OPENSSL_EXT).unwrap();
    let param = format!("ec_paramgen_curve:{curve}");
    for key in ["root", "inter", "ek"] {
        openssl(
            &d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                &param,
                "-out",
                &format!("{key}.key"),
            ],
        );
    }
    let req = |key: &str, cn: &str| {
        openssl(
            &d,
            &[
                "req",
                "-new",
                "-key",
                &format!("{key}.key"),
                "-subj",
                cn,
                "-out",
                &format!("{key}.csr"),
            ],
        );
    };
    req("root", "/CN=Bench ECC Root");
    openssl(
        &d,
        &[
            "x509",
            "-req",
            "-in",
            "root.csr",
            "-signkey",
            "root.key",
            "-days",
            "3650",
            md,
            "-extfile",
            "ext.cnf",
            "-extensions",
            "ca",
            "-outform",
            "DER",
            "-out",
            "root.der",
        ],
    );
    req("inter", "/CN=Bench ECC Intermediate");
    openssl(
        &d,
        &[
            "x509",
            "-req",
            "-in",
            "inter.csr",
            "-CA",
            "root.der",
            "-CAform",
            "DER",
            "-CAkey",
            "root.key",
            "-set_serial",
            "2",
            "-days",
            "3650",
            md,
            "-extfile",
            "ext.cnf",
            "-extensions",
            "ca",
            "-outform",
            "DER",
            "-out",
            "inter.der",
        ],
    );
    req("ek", "/CN=unknown");
    openssl(
        &d,
        &[
            "x509",
            "-req",
            "-in",
            "ek.csr",
            "-CA",
            "inter.der",
            "-CAform",
            "DER",
            "-CAkey",
            "inter.key",
            "-set_serial",
            "0x4cbd0fe61ee762ed",
            "-days",
            "3650",
            md,
            "-extfile",
            "ext.cnf",
            "-extensions",
            "ek",
            "-outform",
            "DER",
            "-out",
            "ek.der",
        ],
    );
    let leaf = std::fs::read(d.join("ek.der")).unwrap();
    let inter = std::fs::read(d.join("inter.der")).unwrap();
    let root = std::fs::read(d.join("root.der")).unwrap();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let key = PublicKey::from_spki_der(cert.tbs_certificate.subject_pki.raw).unwrap();
    Case {
        name,
        ek_public: ek_public(&key),
        signatures: [signed(alg, &leaf, &inter), signed(alg, &inter, &root)],
        policy: policy(root, inter),
        leaf,
        now: SystemTime::now(),
    }
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        stm_case(),
        ecc_case(tmp.path(), "P-256"),
        ecc_case(tmp.path(), "P-384"),
    ];
    let ak_bytes = read(&format!("{TESTDATA}/make-credential/ak.tpm2b_public"));
    let secret = [0x5Au8; 32];
    for case in &cases {
        let evidence = Evidence {
            ek_cert: Some(&case.leaf),
            ek_chain: &[],
            ek_public: Some(&case.ek_public),
        };
        // The setup must describe a passing attestation, or the bench measures a failure.
        let verdict = ek::validate(&case.policy, &evidence, case.now)
            .unwrap_or_else(|e| panic!("{}: EK does not validate: {e} ({e:?})", case.name));
        assert!(
            verdict.warnings.is_empty(),
            "{}: {:?}",
            case.name,
            verdict.warnings
        );

        let ek = Public::decode(&case.ek_public).unwrap();
        let mut spki = [0u8; SPKI_MAX];
        let rsa = match ek.key {
            PublicKey::Rsa { .. } => {
                let der = ek.key.spki_der(&mut spki).unwrap();
                Some(
                    OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(der).unwrap())
                        .unwrap(),
                )
            }
            PublicKey::Ecc { .. } => None,
        };
        let (ecdh_alg, peer) = match ek.key {
            PublicKey::Ecc { curve, x, y } => {
                let alg = if curve.field_len() == 32 {
                    &ECDH_P256
                } else {
                    &ECDH_P384
                };
                (Some(alg), [&[0x04][..], x, y].concat())
            }
            PublicKey::Rsa { .. } => (None, Vec::new()),
        };

        let mut g = c.benchmark_group(format!("attest/{}", case.name));
        g.bench_function("full", |b| {
            b.iter(|| {
                let verdict = ek::validate(&case.policy, black_box(&evidence), case.now).unwrap();
                let ak = check_ak(black_box(&ak_bytes)).unwrap();
                let ek = Public::decode(black_box(&case.ek_public)).unwrap();
                let cred = make_credential(&ek, &ak.name, &secret, &mut SystemRandom).unwrap();
                (verdict.passed, cred)
            })
        });
        let mut out = [0u8; 512];
        g.bench_function("asymmetric_only", |b| {
            b.iter(|| {
                for s in &case.signatures {
                    s.key.verify_sig(black_box(&s.tbs), &s.sig).unwrap();
                }
                if let Some(key) = &rsa {
                    key.encrypt(
                        &OAEP_SHA256_MGF1SHA256,
                        &secret,
                        &mut out,
                        Some(b"IDENTITY\0"),
                    )
                    .unwrap();
                }
                if let Some(alg) = ecdh_alg {
                    let eph = agreement::PrivateKey::generate(alg).unwrap();
                    let q = eph.compute_public_key().unwrap();
                    agreement::agree(&eph, UnparsedPublicKey::new(alg, &peer), (), |z| {
                        Ok(z[0] ^ q.as_ref()[1])
                    })
                    .unwrap();
                }
            })
        });
        g.bench_function("validate_only", |b| {
            b.iter(|| {
                ek::validate(&case.policy, black_box(&evidence), case.now)
                    .unwrap()
                    .passed
            })
        });
        // As asymmetric_only, but the EK key is imported per iteration, as every Login brings
        // a key never seen before (the CA keys can stay parsed across logins).
        let ek_spki = {
            let mut buf = [0u8; SPKI_MAX];
            ek.key.spki_der(&mut buf).unwrap().to_vec()
        };
        g.bench_function("asymmetric_only_fresh_ek", |b| {
            b.iter(|| {
                for s in &case.signatures {
                    s.key.verify_sig(black_box(&s.tbs), &s.sig).unwrap();
                }
                if rsa.is_some() {
                    let key = PublicEncryptingKey::from_der(black_box(&ek_spki)).unwrap();
                    let key = OaepPublicEncryptingKey::new(key).unwrap();
                    key.encrypt(
                        &OAEP_SHA256_MGF1SHA256,
                        &secret,
                        &mut out,
                        Some(b"IDENTITY\0"),
                    )
                    .unwrap();
                }
                if let Some(alg) = ecdh_alg {
                    let eph = agreement::PrivateKey::generate(alg).unwrap();
                    let q = eph.compute_public_key().unwrap();
                    agreement::agree(
                        &eph,
                        UnparsedPublicKey::new(alg, black_box(&peer)),
                        (),
                        |z| Ok(z[0] ^ q.as_ref()[1]),
                    )
                    .unwrap();
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
