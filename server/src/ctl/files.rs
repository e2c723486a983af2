//! Reading certificate and key files for ekattestctl: PEM or DER, bounded in size.
//!
//! Never panics on file content; every failure names what was expected.

use std::io::Read;
use std::path::Path;

use ekattest_protocol::der;
use ekattest_protocol::spki::PublicKey;
use ekattest_protocol::tpm::public::Public;

/// Largest file read (a PEM chain of a few certificates is a few KiB).
const MAX_FILE: u64 = 1 << 20;

/// Reads at most [`MAX_FILE`] bytes; a larger file is an error.
pub(crate) fn read(file: &Path) -> Result<Vec<u8>, String> {
    let f =
        std::fs::File::open(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!(
            "{} is larger than {MAX_FILE} bytes",
            file.display()
        ));
    }
    Ok(bytes)
}

/// Whether the bytes look like PEM text.
pub(crate) fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// The PEM blocks of `bytes` as (label, DER).
fn pem_blocks(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let blocks = pem::parse_many(bytes).map_err(|e| format!("invalid PEM: {e}"))?;
    Ok(blocks
        .into_iter()
        .map(|p| (p.tag().to_owned(), p.into_contents()))
        .collect())
}

/// The DER certificates of a PEM file (CERTIFICATE blocks only), or `bytes` as-is if it is
/// not PEM (DER, concatenated DER or an NV blob, left to the EK layer to split).
pub(crate) fn certificates_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if !is_pem(bytes) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    for (label, der) in pem_blocks(bytes)? {
        if label != "CERTIFICATE" {
            return Err(format!("PEM block {label:?} found; expected CERTIFICATE"));
        }
        out.extend_from_slice(&der);
    }
    if out.is_empty() {
        return Err("no PEM CERTIFICATE block found".to_owned());
    }
    Ok(out)
}

/// The first certificate of a file: PEM (first CERTIFICATE block) or DER / NV blob.
pub(crate) fn first_certificate(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if !is_pem(bytes) {
        return Ok(bytes.to_vec());
    }
    pem_blocks(bytes)?
        .into_iter()
        .find(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| der)
        .ok_or_else(|| "no PEM CERTIFICATE block found".to_owned())
}

/// `tpm_ek.public_hash` of a certificate (PEM, DER, NV blob), a PEM/DER public key, or an
/// EK TPM2B_PUBLIC (`tpm2_readpublic -f tss`).
pub(crate) fn public_hash(bytes: &[u8]) -> Result<[u8; 32], String> {
    if let Ok(public) = Public::decode(bytes) {
        return public
            .key
            .public_hash()
            .map_err(|e| format!("unsupported public key: {e}"));
    }
    let der = if is_pem(bytes) {
        let blocks = pem_blocks(bytes)?;
        let Some((label, der)) = blocks
            .into_iter()
            .find(|(l, _)| l == "CERTIFICATE" || l == "PUBLIC KEY")
        else {
            return Err("no PEM CERTIFICATE or PUBLIC KEY block found".to_owned());
        };
        if label == "PUBLIC KEY" {
            return spki_hash(&der);
        }
        der
    } else {
        bytes.to_vec()
    };
    // DER: maybe an NV blob with a wrapper or padding; maybe a bare SubjectPublicKeyInfo.
    let object = ekattest_protocol::der::nv::first_object(&der)
        .map_err(|e| format!("not a DER certificate or public key: {e}"))?;
    match certificate_spki(object) {
        Some(spki) => spki_hash(spki),
        None => spki_hash(object)
            .map_err(|e| format!("neither a certificate nor a SubjectPublicKeyInfo ({e})")),
    }
}

fn spki_hash(spki: &[u8]) -> Result<[u8; 32], String> {
    PublicKey::from_spki_der(spki)
        .and_then(|k| k.public_hash())
        .map_err(|e| format!("unsupported public key: {e}"))
}

/// The raw SubjectPublicKeyInfo of an X.509 certificate, found by walking the outer TBS
/// fields only, so certificates with odd extensions (which strict parsers refuse) work.
fn certificate_spki(cert: &[u8]) -> Option<&[u8]> {
    let mut tbs = der::Reader::new(cert).sequence().ok()?.sequence().ok()?;
    // [0] version is optional (v1 certificates omit it).
    tbs.read_optional(der::tag::context(0)).ok()?;
    // serial, signature, issuer, validity, subject
    for _ in 0..5 {
        tbs.read().ok()?;
    }
    let spki = tbs.read().ok()?;
    (spki.tag == der::tag::SEQUENCE).then_some(spki.whole)
}

/// Refuses a password or private key file that group or others may access, with the
/// `chmod 600` to run (a file that cannot be examined is left to the reader's error).
pub(crate) fn check_private(flag: &str, path: &Path) -> Result<(), String> {
    use ekattest_protocol::hardening::private_mode_ok_for;
    match crate::daemon::config::private_file_mode(path) {
        Some((mode, uid)) if !private_mode_ok_for(mode, uid == 0) => Err(format!(
            "{flag} {p} is accessible by group or others (mode {m:04o}); run `chmod 600 {p}`",
            p = path.display(),
            m = mode & 0o7777
        )),
        _ => Ok(()),
    }
}
