//! Full EK attestation cost next to the cost of its asymmetric operations alone.
//!
//! `cargo bench -p ekattest-server --bench attest`. One group per EK type:
//! - `full`: what the server does for a Login before it can send the Challenge:
//!   [`ek::validate`] (parse the EK certificate, compare it with the EK public area, build and
//!   verify a path of two signatures to the configured root, TCG profile, attributes), the AK
//!   check, parsing the EK public area and MakeCredential (production path). The configured
//!   CA keys are parsed by aws-lc on the first login and kept with the policy's trust store,
//!   as in the daemon; the EK certificate and the EK key are new on every login.
//! - `asymmetric_only`: the floor, the asymmetric operations alone: the two signature
//!   verifications of that path with CA keys parsed beforehand (aws-lc `ParsedPublicKey`)
//!   over prepared signed bytes (this includes hashing the two tbsCertificates), plus the
//!   MakeCredential asymmetric step: RSA-OAEP encryption of the seed with an EK key imported
//!   beforehand, or ECDH (ephemeral key generation, its point, agreement with the EK point,
//!   which aws-lc decodes and checks on the curve in the agreement).
//! - `asymmetric_only_fresh_ek`: as `asymmetric_only`, but the RSA EK key is imported each
//!   time (SPKI decode and the RSA Montgomery context aws-lc builds on the key's first use),
//!   which no implementation can avoid since every Login brings an EK the server has not
//!   seen. ECC: identical to `asymmetric_only`.
//! - `validate_only`: [`ek::validate`] alone, to split `full` between validation and
//!   MakeCredential.
//!
//! Target: `full` within 1.25x of `asymmetric_only` (the stricter floor; the ratio to
//! `asymmetric_only_fresh_ek` is the realistic one). Chains: RSA-2048 = the real STMicro EK
//! certificate -> STM_RSA_05I -> STM_RSA_RT (2 RSA-2048 PKCS#1 SHA-256 signatures); P-256 and
//! P-384 = an all-ECDSA chain of the same curve (root -> intermediate -> EK, TCG EK profile
//! fields, ecdsa-with-SHA256 / SHA384) generated once with openssl into a temp dir.
//!
//! `ATTEST_ITERS=N` switches to a fixed-count mode for profiling (see [`fixed_count`]).
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a failure aborts the run"
)]

mod common;

use common::{openssl, pem_der};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, UnparsedPublicKey};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256,
    VerificationAlgorithm,
};
use criterion::{Criterion, criterion_group};
use ekattest_protocol::spki::{PublicKey, SPKI_MAX};
use ekattest_protocol::tpm::public::Public;
use ekattest_server::ak::check_ak;
use ekattest_server::credential::{SystemRandom, make_credential};
use ekattest_server::ek::{self, ChainOptions, EkPolicy, Evidence, ProfileMode, TrustStore};
use ekattest_testkit::testdata;
use x509_parser::prelude::{FromDer, X509Certificate};

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
    let leaf = testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der");
    let inter = pem_der(testdata::existing("real-ek/ca/STM_RSA_05I.pem"));
    let root = pem_der(testdata::existing("real-ek/ca/STM_RSA_RT.pem"));
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

/// Everything one case's routines need, prepared once.
struct Prepared<'a> {
    case: &'a Case,
    evidence: Evidence<'a>,
    ak_bytes: &'a [u8],
    secret: [u8; 32],
    /// RSA EK: the OAEP key, parsed once (`asymmetric_only`).
    rsa: Option<OaepPublicEncryptingKey>,
    /// ECC EK: the agreement algorithm and the EK point (uncompressed).
    ecdh: Option<(&'static agreement::Algorithm, Vec<u8>)>,
    /// The EK's canonical SPKI DER (`asymmetric_only_fresh_ek` imports it per iteration).
    ek_spki: Vec<u8>,
}

impl<'a> Prepared<'a> {
    fn new(case: &'a Case, ak_bytes: &'a [u8]) -> Self {
        let evidence = Evidence {
            ek_cert: Some(&case.leaf),
            ek_chain: &[],
            ek_public: Some(Public::decode(&case.ek_public).unwrap()),
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
        let ek_spki = ek.key.spki_der(&mut spki).unwrap().to_vec();
        let (rsa, ecdh) = match ek.key {
            PublicKey::Rsa { .. } => {
                let key = PublicEncryptingKey::from_der(&ek_spki).unwrap();
                (Some(OaepPublicEncryptingKey::new(key).unwrap()), None)
            }
            PublicKey::Ecc { curve, x, y } => {
                let alg = if curve.field_len() == 32 {
                    &ECDH_P256
                } else {
                    &ECDH_P384
                };
                (None, Some((alg, [&[0x04][..], x, y].concat())))
            }
        };
        Self {
            case,
            evidence,
            ak_bytes,
            secret: [0x5A; 32],
            rsa,
            ecdh,
            ek_spki,
        }
    }

    /// The production path of a Login up to the Challenge.
    fn full(&self) -> impl Sized {
        let case = self.case;
        let verdict = ek::validate(&case.policy, black_box(&self.evidence), case.now).unwrap();
        let ak = check_ak(black_box(self.ak_bytes)).unwrap();
        let ek = Public::decode(black_box(&case.ek_public)).unwrap();
        let cred = make_credential(&ek, &ak.name, &self.secret, &mut SystemRandom).unwrap();
        (verdict.passed, cred)
    }

    fn validate_only(&self) -> impl Sized {
        ek::validate(&self.case.policy, black_box(&self.evidence), self.case.now)
            .unwrap()
            .passed
    }

    /// The two signature verifications (keys parsed, signed bytes extracted beforehand).
    fn signatures(&self) {
        for s in &self.case.signatures {
            s.key.verify_sig(black_box(&s.tbs), &s.sig).unwrap();
        }
    }

    /// ECDH half of MakeCredential: ephemeral key, its point, agreement with the EK point.
    fn ecdh(alg: &'static agreement::Algorithm, peer: &[u8]) -> u8 {
        let eph = agreement::PrivateKey::generate(alg).unwrap();
        let q = eph.compute_public_key().unwrap();
        agreement::agree(
            &eph,
            UnparsedPublicKey::new(alg, black_box(peer)),
            (),
            |z| Ok(z[0] ^ q.as_ref()[1]),
        )
        .unwrap()
    }

    fn oaep(&self, key: &OaepPublicEncryptingKey) -> u8 {
        let mut out = [0u8; 512];
        key.encrypt(
            &OAEP_SHA256_MGF1SHA256,
            &self.secret,
            &mut out,
            Some(b"IDENTITY\0"),
        )
        .unwrap()[0]
    }

    fn asymmetric_only(&self) -> u8 {
        self.signatures();
        match (&self.rsa, &self.ecdh) {
            (Some(key), _) => self.oaep(key),
            (None, Some((alg, peer))) => Self::ecdh(alg, peer),
            (None, None) => unreachable!(),
        }
    }

    /// As `asymmetric_only`, but the EK key is imported each time: every Login brings a key
    /// never seen before (the CA keys can stay parsed across logins).
    fn asymmetric_only_fresh_ek(&self) -> u8 {
        self.signatures();
        match &self.ecdh {
            None => {
                let key = PublicEncryptingKey::from_der(black_box(&self.ek_spki)).unwrap();
                self.oaep(&OaepPublicEncryptingKey::new(key).unwrap())
            }
            Some((alg, peer)) => Self::ecdh(alg, peer),
        }
    }

    fn run(&self, routine: &str) {
        match routine {
            "full" => drop(black_box(self.full())),
            "asymmetric_only" => drop(black_box(self.asymmetric_only())),
            "validate_only" => drop(black_box(self.validate_only())),
            "asymmetric_only_fresh_ek" => drop(black_box(self.asymmetric_only_fresh_ek())),
            // Diagnostics for the fixed-count mode (not run by criterion).
            "signatures_only" => self.signatures(),
            "make_credential_only" => {
                let ak = check_ak(black_box(self.ak_bytes)).unwrap();
                let ek = Public::decode(black_box(&self.case.ek_public)).unwrap();
                let cred = make_credential(&ek, &ak.name, &self.secret, &mut SystemRandom);
                drop(black_box(cred.unwrap()));
            }
            other => panic!("unknown routine {other}"),
        }
    }
}

const ROUTINES: [&str; 4] = [
    "full",
    "asymmetric_only",
    "validate_only",
    "asymmetric_only_fresh_ek",
];

fn cases(dir: &Path) -> [Case; 3] {
    [stm_case(), ecc_case(dir, "P-256"), ecc_case(dir, "P-384")]
}

fn ak_bytes() -> Vec<u8> {
    testdata::vector("ak.tpm2b_public")
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases(tmp.path());
    let ak = ak_bytes();
    for case in &cases {
        let p = Prepared::new(case, &ak);
        let mut g = c.benchmark_group(format!("attest/{}", case.name));
        for routine in ROUTINES {
            g.bench_function(routine, |b| b.iter(|| p.run(routine)));
        }
        g.finish();
    }
}

/// Fixed-count mode for instruction counting (criterion's iteration counts depend on time):
/// `ATTEST_ITERS=N cargo bench -p ekattest-server --bench attest -- CASE/ROUTINE` runs that
/// routine N times after the setup (in batches of 20, printing the fastest batch's time per
/// iteration) and exits. Under `valgrind --tool=callgrind` the instruction count of one
/// iteration is the difference between runs with two values of N, divided by their
/// difference (the first iterations pay one-time initialisation, such as aws-lc's DRBG).
/// ROUTINE is one of the criterion routines, or `signatures_only` / `make_credential_only`
/// (the AK check and MakeCredential) to split them further.
fn fixed_count(iters: &str) {
    let iters: u64 = iters.parse().unwrap();
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| panic!("ATTEST_ITERS needs a CASE/ROUTINE argument"));
    let (name, routine) = which.split_once('/').unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases(tmp.path());
    let case = cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("unknown case {name}"));
    let ak = ak_bytes();
    let p = Prepared::new(case, &ak);
    // Batches of 20; the fastest is the least disturbed by other load on the machine.
    const BATCH: u64 = 20;
    let mut best = Duration::MAX;
    for _ in 0..iters / BATCH {
        let start = Instant::now();
        for _ in 0..BATCH {
            p.run(routine);
        }
        best = best.min(start.elapsed());
    }
    for _ in 0..iters % BATCH {
        p.run(routine);
    }
    if iters >= BATCH {
        let ns = best.as_nanos() / u128::from(BATCH);
        eprintln!("{which}: {ns} ns/iter (fastest batch of {BATCH})");
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Ok(iters) = std::env::var("ATTEST_ITERS") {
        fixed_count(&iters);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
