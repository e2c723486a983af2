//! Shared helpers of the EK validation tests: test data paths, PEM loading, an `openssl`
//! CLI driven PKI that makes certificates at test time, and TPM2B_PUBLIC construction.
//!
//! Missing data or tools make the calling test fail with a message saying what to install.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ekattest_protocol::spki::{EccCurve, PublicKey};

/// The real EK test data folder.
pub(crate) fn real_ek() -> PathBuf {
    ekattest_testkit::testdata::existing("real-ek")
}

/// Reads a file or fails the test with its path.
pub(crate) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// DER of every certificate in a PEM file.
pub(crate) fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let text = read(path);
    let blocks = pem::parse_many(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    assert!(!certs.is_empty(), "{}: no certificate", path.display());
    certs
}

/// DER of the single certificate in a PEM file of the real CA set.
pub(crate) fn ca(name: &str) -> Vec<u8> {
    let mut certs = pem_certs(&real_ek().join("ca").join(name));
    assert_eq!(certs.len(), 1, "{name}: expected one certificate");
    certs.remove(0)
}

/// A UNIX time as SystemTime.
pub(crate) fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// 2024-06-01T00:00:00Z: inside the validity of every real certificate used here.
pub(crate) const JUNE_2024: u64 = 1_717_200_000;

/// Runs a command, failing the test with its output if it cannot run or fails.
pub(crate) fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Key types for generated certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Rsa(u32),
    P256,
    P384,
    P521,
}

/// What a generated certificate looks like.
#[derive(Debug, Clone)]
pub(crate) struct Spec<'a> {
    /// File stem; the key is `<name>.key`, the certificate `<name>.pem`.
    pub(crate) name: &'a str,
    /// `openssl -subj` form.
    pub(crate) subject: &'a str,
    pub(crate) key: Key,
    /// Stem of the issuing certificate, or `None` for self-signed.
    pub(crate) issuer: Option<&'a str>,
    /// Lines of the v3 extension section.
    pub(crate) ext: &'a str,
    /// Extra config sections (e.g. the SAN dirName section).
    pub(crate) sections: &'a str,
    /// openssl digest option (`sha256`, `sha384`, `sha1`...).
    pub(crate) digest: &'a str,
    /// Extra `-sigopt` values (RSA-PSS).
    pub(crate) sigopts: &'a [&'a str],
    pub(crate) days: u32,
    pub(crate) serial: &'a str,
    /// openssl `string_mask` (`default` gives PrintableString, `utf8only` UTF8String).
    pub(crate) string_mask: &'a str,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            name: "cert",
            subject: "/CN=test",
            key: Key::P256,
            issuer: None,
            ext: CA_EXT,
            sections: "",
            digest: "sha256",
            sigopts: &[],
            days: 30,
            serial: "0x01",
            string_mask: "default",
        }
    }
}

/// Extensions of a CA certificate.
pub(crate) const CA_EXT: &str = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid";

/// A TCG-conformant RSA EK certificate's extensions (identity as three RDNs).
pub(crate) const EK_RSA_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment\nsubjectAltName=critical,dirName:tpm_id\nauthorityKeyIdentifier=keyid\nextendedKeyUsage=2.23.133.8.1";

/// The identity section used with the EK extensions.
pub(crate) const TPM_ID: &str =
    "[tpm_id]\na.2.23.133.2.1=id:4E544300\nb.2.23.133.2.2=NPCT75x\nc.2.23.133.2.3=id:00070040\n";

/// A temporary PKI driven by the openssl CLI.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Creates the temp dir and checks that openssl runs.
    pub(crate) fn new() -> Self {
        run(Command::new("openssl").arg("version"));
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The temp dir.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn key(&self, name: &str, key: Key) -> PathBuf {
        let path = self.dir().join(format!("{name}.key"));
        let mut cmd = Command::new("openssl");
        cmd.arg("genpkey").arg("-out").arg(&path);
        match key {
            Key::Rsa(bits) => cmd
                .args(["-algorithm", "RSA", "-pkeyopt"])
                .arg(format!("rsa_keygen_bits:{bits}")),
            Key::P256 => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            Key::P384 => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
            Key::P521 => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"]),
        };
        run(&mut cmd);
        path
    }

    /// Makes a certificate (and its key unless `<name>.key` exists) and returns its DER.
    pub(crate) fn cert(&self, spec: &Spec<'_>) -> Vec<u8> {
        let key = self.dir().join(format!("{}.key", spec.name));
        let key = if key.is_file() {
            key
        } else {
            self.key(spec.name, spec.key)
        };
        let cfg = self.dir().join(format!("{}.cnf", spec.name));
        let text = format!(
            "[req]\ndistinguished_name=dn\nstring_mask={}\n[dn]\n[v3]\n{}\n{}",
            spec.string_mask, spec.ext, spec.sections
        );
        std::fs::write(&cfg, text).expect("write config");
        let pem = self.dir().join(format!("{}.pem", spec.name));
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-new", "-x509", "-config"])
            .arg(&cfg)
            .arg("-key")
            .arg(&key)
            .args([
                "-subj",
                spec.subject,
                "-extensions",
                "v3",
                "-set_serial",
                spec.serial,
            ])
            .arg(format!("-{}", spec.digest))
            .arg("-days")
            .arg(spec.days.to_string())
            .arg("-out")
            .arg(&pem);
        for opt in spec.sigopts {
            cmd.args(["-sigopt", opt]);
        }
        if let Some(issuer) = spec.issuer {
            cmd.arg("-CA")
                .arg(self.dir().join(format!("{issuer}.pem")))
                .arg("-CAkey")
                .arg(self.dir().join(format!("{issuer}.key")));
        }
        run(&mut cmd);
        pem_certs(&pem).remove(0)
    }
}

/// Builds an EK-style TPM2B_PUBLIC (RSA: AES-128-CFB, SHA-256; ECC: by curve) for the key
/// of a DER SubjectPublicKeyInfo, as a TPM would report it.
pub(crate) fn tpm2b_public(spki: &[u8]) -> Vec<u8> {
    let key = PublicKey::from_spki_der(spki).expect("supported SPKI");
    let mut t = Vec::new();
    let policy_a: [u8; 32] = [
        0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7,
        0x24, 0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14,
        0x69, 0xAA,
    ];
    let tpm2b = |t: &mut Vec<u8>, b: &[u8]| {
        t.extend_from_slice(&u16::try_from(b.len()).unwrap().to_be_bytes());
        t.extend_from_slice(b);
    };
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            t.extend_from_slice(&[0x00, 0x01, 0x00, 0x0B]);
            t.extend_from_slice(&0x0003_00B2u32.to_be_bytes());
            tpm2b(&mut t, &policy_a);
            t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10]);
            let m: Vec<u8> = modulus.iter().copied().skip_while(|&b| b == 0).collect();
            t.extend_from_slice(&u16::try_from(m.len() * 8).unwrap().to_be_bytes());
            let e = if exponent == 65537 { 0 } else { exponent };
            t.extend_from_slice(&e.to_be_bytes());
            tpm2b(&mut t, &m);
        }
        PublicKey::Ecc { curve, x, y } => {
            let (curve_id, hash) = match curve {
                EccCurve::NistP256 => (0x0003u16, 0x000Bu16),
                EccCurve::NistP384 => (0x0004, 0x000C),
                EccCurve::NistP521 => (0x0005, 0x000D),
            };
            t.extend_from_slice(&[0x00, 0x23]);
            t.extend_from_slice(&hash.to_be_bytes());
            t.extend_from_slice(&0x0003_00B2u32.to_be_bytes());
            tpm2b(&mut t, &policy_a);
            t.extend_from_slice(&[0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10]);
            t.extend_from_slice(&curve_id.to_be_bytes());
            t.extend_from_slice(&[0x00, 0x10]);
            tpm2b(&mut t, x);
            tpm2b(&mut t, y);
        }
    }
    let mut out = u16::try_from(t.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub(crate) fn spki_of(cert_der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert_der).expect("certificate parses");
    c.tbs_certificate.subject_pki.raw.to_vec()
}

/// SHA-256 of the certificate's public key as the seed's openssl pipeline computes it
/// (`openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256sum`): an independent
/// reference for `public_hash`.
pub(crate) fn openssl_public_hash(pki_dir: &Path, cert_der: &[u8]) -> String {
    let path = pki_dir.join("hash-input.der");
    std::fs::write(&path, cert_der).expect("write cert");
    let pubkey = run(Command::new("openssl")
        .args(["x509", "-inform", "DER", "-pubkey", "-noout", "-in"])
        .arg(&path));
    let pub_path = pki_dir.join("hash-input.pub.pem");
    std::fs::write(&pub_path, pubkey).expect("write pubkey");
    let der = run(Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "DER", "-in"])
        .arg(&pub_path));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    hex::encode(digest.as_ref())
}

/// Splits one DER TLV off the front of `b`: (the whole TLV, its content, the rest).
pub(crate) fn split_tlv(b: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (header, len) = match b[1] {
        n if n < 0x80 => (2, usize::from(n)),
        0x81 => (3, usize::from(b[2])),
        0x82 => (4, usize::from(u16::from_be_bytes([b[2], b[3]]))),
        n => panic!("unexpected DER length byte {n:#04x}"),
    };
    (
        &b[..header + len],
        &b[header..header + len],
        &b[header + len..],
    )
}

/// A DER TLV with a definite length.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        n if n < 0x80 => out.push(u8::try_from(n).unwrap()),
        n if n < 0x100 => out.extend_from_slice(&[0x81, u8::try_from(n).unwrap()]),
        n => {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
        }
    }
    out.extend_from_slice(content);
    out
}

/// The tbsCertificate and signatureAlgorithm TLVs of a DER certificate.
pub(crate) fn cert_parts(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, body, _) = split_tlv(der);
    let (tbs, _, rest) = split_tlv(body);
    let (alg, _, _) = split_tlv(rest);
    (tbs.to_vec(), alg.to_vec())
}

/// Replaces every occurrence of `from` in `bytes` by `to` (same length); panics if none.
pub(crate) fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len(), "patches keep DER lengths");
    let mut found = false;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            found = true;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(found, "pattern {from:02x?} not found");
}

/// The notBefore and notAfter UTCTime TLVs (13-character times) of a certificate.
pub(crate) fn validity(der: &[u8]) -> ([u8; 15], [u8; 15]) {
    let at = der
        .windows(4)
        .position(|w| w == [0x30, 0x1e, 0x17, 0x0d])
        .expect("a Validity of two UTCTimes");
    let nb: [u8; 15] = der[at + 2..at + 17].try_into().unwrap();
    let na: [u8; 15] = der[at + 17..at + 32].try_into().unwrap();
    (nb, na)
}

impl Pki {
    /// Re-signs a certificate after `edit` changed its tbsCertificate (keeping every length),
    /// with `<issuer>.key` and `digest` (the certificate's own signature algorithm, which is
    /// kept): `openssl dgst -sign` makes the signature, so the result verifies with openssl.
    pub(crate) fn resign(
        &self,
        cert: &[u8],
        issuer: &str,
        digest: &str,
        edit: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let (mut tbs, alg) = cert_parts(cert);
        edit(&mut tbs);
        let tbs_path = self.dir().join("resign-tbs.der");
        std::fs::write(&tbs_path, &tbs).expect("write tbs");
        let sig = run(Command::new("openssl")
            .args(["dgst", &format!("-{digest}"), "-sign"])
            .arg(self.dir().join(format!("{issuer}.key")))
            .arg(&tbs_path));
        let mut bits = vec![0u8];
        bits.extend_from_slice(&sig);
        let body = [tbs, alg, tlv(0x03, &bits)].concat();
        tlv(0x30, &body)
    }

    /// Writes DER to `<name>.der` in the PKI folder and returns its path.
    pub(crate) fn write(&self, name: &str, der: &[u8]) -> PathBuf {
        let path = self.dir().join(format!("{name}.der"));
        std::fs::write(&path, der).expect("write certificate");
        path
    }

    /// `openssl verify` of `ek` against self-signed `anchors` with `untrusted` intermediates
    /// (certificate stems of this PKI), at UNIX time `attime`: Ok, or openssl's output.
    pub(crate) fn openssl_verify(
        &self,
        anchors: &[&str],
        untrusted: &[&str],
        ek: &[u8],
        attime: u64,
    ) -> Result<(), String> {
        let bundle = |name: &str, stems: &[&str]| {
            let mut text = Vec::new();
            for s in stems {
                text.extend(read(&self.dir().join(format!("{s}.pem"))));
            }
            let path = self.dir().join(name);
            std::fs::write(&path, text).expect("write bundle");
            path
        };
        let ek_path = self.dir().join("verify-ek.der");
        std::fs::write(&ek_path, ek).expect("write ek");
        let ek_pem = run(Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&ek_path));
        let ek_pem_path = self.dir().join("verify-ek.pem");
        std::fs::write(&ek_pem_path, ek_pem).expect("write ek pem");
        let mut cmd = Command::new("openssl");
        cmd.args(["verify", "-attime", &attime.to_string(), "-CAfile"])
            .arg(bundle("verify-anchors.pem", anchors));
        if !untrusted.is_empty() {
            cmd.arg("-untrusted")
                .arg(bundle("verify-untrusted.pem", untrusted));
        }
        let out = cmd.arg(&ek_pem_path).output().expect("run openssl verify");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `openssl x509 -text` of a DER certificate.
    pub(crate) fn openssl_text(&self, der: &[u8]) -> String {
        let path = self.dir().join("text-input.der");
        std::fs::write(&path, der).expect("write cert");
        String::from_utf8(run(Command::new("openssl")
            .args(["x509", "-inform", "DER", "-noout", "-text", "-in"])
            .arg(&path)))
        .expect("openssl prints text")
    }
}

/// The error and each of its sources, outermost first.
pub(crate) fn error_messages(e: &dyn std::error::Error) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

/// Fails if a message of an error chain repeats one printed before it (with or without a
/// prefix): each reason must be printed once.
pub(crate) fn assert_no_repeated_reason(e: &dyn std::error::Error) {
    let msgs = error_messages(e);
    for (i, later) in msgs.iter().enumerate() {
        for earlier in &msgs[..i] {
            assert!(
                !earlier.contains(later.as_str()),
                "error chain repeats {later:?} (already in {earlier:?}): {msgs:#?}"
            );
        }
    }
}
