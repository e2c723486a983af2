//! Adding the L-2 P-256 EK certificate at NV 0x01C0000A, which swtpm_setup 0.7.1 cannot do.
//!
//! Steps: `tpm2_createek -G ecc` (default TCG L-2 template), x/y from its TPM2B_PUBLIC
//! (`ekattest_protocol::tpm::public::Public::decode`),
//! `swtpm_localca --type ek --ek x=..,y=..,id=secp256r1` with the per-run CA, then
//! `tpm2_nvdefine 0x01C0000A -C p` with the attributes swtpm_setup uses for its own EK
//! certificates and `tpm2_nvwrite -C p` (the platform hierarchy has empty auth in swtpm).
//! The EK is not persisted: like many real TPMs, the device must CreatePrimary it. Every
//! transient object is flushed again, also on error.

use std::fs;
use std::path::Path;

use super::ca::read;
use super::device::EkKind;
use super::tool::os_args;
use super::{Ca, Device, Error, Result};

/// NV attributes swtpm_setup 0.7.1 gives its EK certificate indices (0x62072001 once
/// written): platform-created, PP read/write, owner and index-auth read, no DA.
const NV_ATTRIBUTES: &str = "ppwrite|writedefine|ppread|ownerread|authread|no_da|platformcreate";

/// Creates the P-256 EK on `dev`, has `ca` certify it, stores the certificate in NV and in
/// `certs/ek-secp256r1.crt`.
pub(crate) fn add_ek_cert(dev: &Device, ca: &Ca) -> Result<()> {
    let public = dev.ek_public_file(EkKind::P256)?;
    let (x, y) = ecc_point(&public)?;
    let dir = dev.work_dir().join("p256-cert");
    super::ca::mkdir(&dir)?;
    let cert = ca.sign_ek_p256(&x, &y, &dir)?;
    let size = fs::metadata(&cert)
        .map_err(|source| Error::Io {
            op: "stat",
            path: cert.clone(),
            source,
        })?
        .len()
        .to_string();
    let index = format!("0x{:08X}", EkKind::P256.nv_index());
    dev.tpm2(
        "tpm2_nvdefine",
        &os_args![index, "-C", "p", "-s", size, "-a", NV_ATTRIBUTES],
    )?;
    dev.tpm2("tpm2_nvwrite", &os_args!["-C", "p", "-i", cert, index])?;
    let target = dev.certs_dir().join(EkKind::P256.cert_file_name());
    fs::copy(&cert, &target).map_err(|source| Error::Io {
        op: "copy the P-256 EK certificate to",
        path: target,
        source,
    })?;
    Ok(())
}

/// x and y (lowercase hex, left-padded to 32 bytes) of a P-256 TPM2B_PUBLIC file, parsed
/// with `ekattest_protocol::tpm::public` (the harness test checks the resulting certificate
/// against `tpm2_readpublic -f pem` independently).
fn ecc_point(tpm2b_public: &Path) -> Result<(String, String)> {
    use ekattest_protocol::spki::{EccCurve, PublicKey};
    use ekattest_protocol::tpm::public::Public;
    let bytes = read(tpm2b_public)?;
    let bad = |detail: String| Error::Unexpected {
        what: format!("the P-256 EK public {}", tpm2b_public.display()),
        detail,
    };
    let public = Public::decode(&bytes).map_err(|e| bad(e.to_string()))?;
    match public.key {
        PublicKey::Ecc {
            curve: EccCurve::NistP256,
            x,
            y,
        } => Ok((
            padded_hex(x).ok_or_else(|| bad("x longer than 32 bytes".into()))?,
            padded_hex(y).ok_or_else(|| bad("y longer than 32 bytes".into()))?,
        )),
        other => Err(bad(format!("not a P-256 key: {other:?}"))),
    }
}

/// `coord` as 64 lowercase hex digits (left-padded with zeros), `None` if it is too long.
fn padded_hex(coord: &[u8]) -> Option<String> {
    let pad = 32usize.checked_sub(coord.len())?;
    Some(format!("{}{}", "00".repeat(pad), hex::encode(coord)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_are_left_padded_to_the_field_size() {
        assert_eq!(padded_hex(&[0xab; 32]).unwrap(), "ab".repeat(32));
        assert_eq!(
            padded_hex(&[0x01, 0x02]).unwrap(),
            format!("{}0102", "00".repeat(30))
        );
        assert_eq!(padded_hex(&[0; 33]), None);
    }
}
