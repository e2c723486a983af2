//! Endorsement Key discovery (TCG EK Credential Profile 2.x; DESIGN.md section 4).
//!
//! 1. List NV indices 0x01C00000..=0x01C07FFF and persistent handles 0x81010000..=0x810100FF.
//! 2. For each certificate index we know a template for (L-1, L-2, H-3 as swtpm makes it,
//!    H-6), read the certificate (chunked NV reads), trim it to its first DER object and take
//!    its key. Low-range EK nonce/template indices, when present, change the template.
//! 3. Prefer a persistent EK whose public area equals the template in every field but
//!    `unique` and whose key equals the certificate's; otherwise CreatePrimary in the
//!    endorsement hierarchy. The EK public must equal the certificate key.
//! 4. Read the chain range 0x01C00100..=0x01C001FF (concatenated DER certificates).
//!
//! With no certificate at all, the L-1 RSA EK is still reported (public key only). This
//! module leaves no transient object loaded and never trusts NV contents beyond their size.

use ekattest_protocol::der::nv;
use ekattest_protocol::spki::PublicKey;
use ekattest_protocol::tpm::public::{Public, attr};

use super::Transport;
use super::commands::{ObjectPublic, RH_ENDORSEMENT, Scope, Tpm};
use super::error::Error;
use super::templates::{self, Template, unique_offset};
use crate::cert;

/// NV range that holds EK certificates, nonces and templates.
pub const NV_EK_RANGE: (u32, u32) = (0x01C0_0000, 0x01C0_7FFF);
/// NV range that holds the EK certificate chain.
pub const NV_CHAIN_RANGE: (u32, u32) = (0x01C0_0100, 0x01C0_01FF);
/// Persistent handle range reserved for EKs.
pub const PERSISTENT_EK_RANGE: (u32, u32) = (0x8101_0000, 0x8101_00FF);

/// The EK templates this agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EkKind {
    /// TCG L-1: RSA-2048, certificate at 0x01C00002.
    Rsa2048,
    /// TCG L-2: ECC P-256, certificate at 0x01C0000A.
    P256,
    /// TCG H-3 (swtpm's ECC EK): ECC P-384, certificate at 0x01C00016.
    P384,
    /// TCG H-6: RSA-3072, certificate at 0x01C0001C.
    Rsa3072,
}

impl EkKind {
    /// Every kind, in the order discovery reports them.
    pub const ALL: [Self; 4] = [Self::Rsa2048, Self::P256, Self::P384, Self::Rsa3072];

    /// Short name used on the command line and in JSON (`rsa2048`, `p256`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa2048 => "rsa2048",
            Self::P256 => "p256",
            Self::P384 => "p384",
            Self::Rsa3072 => "rsa3072",
        }
    }

    /// Parses [`EkKind::as_str`]'s output.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The template's name in the TCG profile.
    #[must_use]
    pub fn template_name(self) -> &'static str {
        match self {
            Self::Rsa2048 => "L-1 RSA-2048",
            Self::P256 => "L-2 ECC NIST P-256",
            Self::P384 => "H-3 ECC NIST P-384",
            Self::Rsa3072 => "H-6 RSA-3072",
        }
    }

    /// Key type for display (`RSA-2048`, `ECC P-256`, ...).
    #[must_use]
    pub fn key_type(self) -> &'static str {
        match self {
            Self::Rsa2048 => "RSA-2048",
            Self::P256 => "ECC P-256",
            Self::P384 => "ECC P-384",
            Self::Rsa3072 => "RSA-3072",
        }
    }

    /// NV index of this template's EK certificate.
    #[must_use]
    pub fn cert_index(self) -> u32 {
        match self {
            Self::Rsa2048 => 0x01C0_0002,
            Self::P256 => 0x01C0_000A,
            Self::P384 => 0x01C0_0016,
            Self::Rsa3072 => 0x01C0_001C,
        }
    }

    /// Low-range nonce and template NV indices, if the template has them.
    fn nonce_template_indices(self) -> Option<(u32, u32)> {
        match self {
            Self::Rsa2048 => Some((0x01C0_0003, 0x01C0_0004)),
            Self::P256 => Some((0x01C0_000B, 0x01C0_000C)),
            Self::P384 | Self::Rsa3072 => None,
        }
    }

    fn template(self) -> Template {
        match self {
            Self::Rsa2048 => templates::EK_L1_RSA2048,
            Self::P256 => templates::EK_L2_P256,
            Self::P384 => templates::EK_H3_P384,
            Self::Rsa3072 => templates::EK_H6_RSA3072,
        }
    }
}

/// One endorsement key, located and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ek {
    /// Which template it follows.
    pub kind: EkKind,
    /// NV index of its certificate, if it has one.
    pub nv_index: Option<u32>,
    /// The certificate, trimmed to its DER.
    pub certificate: Option<Vec<u8>>,
    /// TPM2B_PUBLIC of the EK.
    pub public: Vec<u8>,
    /// The EK's Name.
    pub name: Vec<u8>,
    /// Persistent handle, if the EK was found persisted; otherwise it is recreated from
    /// [`Ek::template`] whenever it is needed.
    pub handle: Option<u32>,
    /// TPMT_PUBLIC template that recreates this EK with CreatePrimary.
    pub template: Vec<u8>,
    /// SHA-256 of the EK's DER SubjectPublicKeyInfo (`tpm_ek.public_hash`).
    pub public_hash: [u8; 32],
}

impl Ek {
    /// Whether ActivateCredential needs a PolicySecret(TPM_RH_ENDORSEMENT) session for this
    /// EK (userWithAuth clear: the low-range templates); otherwise a password session works.
    ///
    /// # Errors
    /// [`Error::Public`] if the stored public area does not parse (cannot happen for an
    /// [`Ek`] built by [`discover`]).
    pub fn needs_policy(&self) -> Result<bool, Error> {
        Ok(!self.decoded()?.has(attr::USER_WITH_AUTH))
    }

    /// The EK's nameAlg TPM_ALG_ID (the policy session's hash).
    ///
    /// # Errors
    /// As [`Ek::needs_policy`].
    pub fn name_alg(&self) -> Result<u16, Error> {
        Ok(self.decoded()?.name_alg.id())
    }

    fn decoded(&self) -> Result<Public<'_>, Error> {
        Public::decode(&self.public).map_err(|e| public_error(self.kind.template_name(), e))
    }
}

/// Everything discovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endorsement {
    /// EKs in [`EkKind::ALL`] order.
    pub eks: Vec<Ek>,
    /// Certificates from the chain range (intermediates), in NV order.
    pub chain: Vec<Vec<u8>>,
}

impl Endorsement {
    /// The EK of `kind`, or the first one found if `kind` is `None`.
    ///
    /// # Errors
    /// [`Error::NoEk`] listing what exists.
    pub fn pick(&self, kind: Option<EkKind>) -> Result<&Ek, Error> {
        let found = self.eks.iter().find(|e| kind.is_none_or(|k| e.kind == k));
        found.ok_or_else(|| Error::NoEk {
            what: kind.map_or(String::new(), |k| format!("{} ", k.as_str())),
            found: if self.eks.is_empty() {
                "none".to_owned()
            } else {
                self.eks
                    .iter()
                    .map(|e| e.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
    }
}

fn public_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Public {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// The EK certificate in the contents of NV index `index`: the first DER object, behind a
/// PC Client stored-certificate header (5-byte `10 01 00 LLLL` or 7-byte
/// `10 01 00 LLLL 10 02`) if there is one, without the padding after it
/// (`ekattest_protocol::der::nv::first_object`, shared with the server and `ekattestctl`).
fn certificate_in_nv(index: u32, blob: &[u8]) -> Result<&[u8], Error> {
    nv::first_object(blob)
        .map_err(|e| public_error(&format!("EK certificate at NV {index:#010x}"), e))
}

/// Reads an NV index whole (size from NV_ReadPublic, data in chunks).
///
/// # Errors
/// TPM or transport errors from NV_ReadPublic / NV_Read.
pub fn read_nv<T: Transport>(tpm: &mut Tpm<T>, index: u32) -> Result<Vec<u8>, Error> {
    let public = tpm.nv_read_public(index)?;
    tpm.nv_read(index, public.data_size)
}

fn in_range(h: u32, (lo, hi): (u32, u32)) -> bool {
    (lo..=hi).contains(&h)
}

/// Finds every EK this TPM has a certificate for (or the L-1 EK alone if none), checks each
/// against its certificate, and reads the chain range.
///
/// # Errors
/// TPM/transport errors, [`Error::EkMismatch`] if an EK's key differs from its certificate,
/// [`Error::Public`] for an unusable certificate or public area.
pub fn discover<T: Transport>(tpm: &mut Tpm<T>) -> Result<Endorsement, Error> {
    let nv: Vec<u32> = tpm
        .handles(NV_EK_RANGE.0)?
        .into_iter()
        .filter(|h| in_range(*h, NV_EK_RANGE))
        .collect();
    let mut persistent = Vec::new();
    for h in tpm.handles(0x8100_0000)? {
        if in_range(h, PERSISTENT_EK_RANGE) {
            // One unreadable persistent object must not hide the others.
            match tpm.read_public(h) {
                Ok(public) => persistent.push((h, public)),
                Err(e) => log::warn!("skipping persistent handle {h:#010x}: {e}"),
            }
        }
    }
    let mut out = Endorsement::default();
    for kind in EkKind::ALL {
        let index = kind.cert_index();
        if !nv.contains(&index) {
            continue;
        }
        let blob = read_nv(tpm, index)?;
        let cert = certificate_in_nv(index, &blob)?;
        let template = template_for(tpm, kind, &nv)?;
        let ek = locate(tpm, kind, template, &persistent, Some((index, cert)))?;
        out.eks.push(ek);
    }
    if out.eks.is_empty() {
        let kind = EkKind::Rsa2048;
        let template = template_for(tpm, kind, &nv)?;
        out.eks
            .push(locate(tpm, kind, template, &persistent, None)?);
    }
    for index in nv.iter().copied().filter(|h| in_range(*h, NV_CHAIN_RANGE)) {
        let blob = read_nv(tpm, index)?;
        for obj in nv::objects(&blob) {
            match obj {
                Ok(c) => out.chain.push(c.to_vec()),
                Err(e) => {
                    log::warn!("EK chain NV {index:#010x}: {e:?}; ignoring the rest");
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// The template for `kind`, honouring the low-range nonce/template NV indices.
fn template_for<T: Transport>(
    tpm: &mut Tpm<T>,
    kind: EkKind,
    nv: &[u32],
) -> Result<Vec<u8>, Error> {
    let Some((nonce_index, template_index)) = kind.nonce_template_indices() else {
        return Ok(kind.template().tpmt());
    };
    if nv.contains(&template_index) {
        log::info!("using the EK template from NV {template_index:#010x}");
        return read_nv(tpm, template_index);
    }
    if nv.contains(&nonce_index) {
        log::info!("using the EK nonce from NV {nonce_index:#010x}");
        let nonce = read_nv(tpm, nonce_index)?;
        return Ok(kind.template().tpmt_with_nonce(&nonce));
    }
    Ok(kind.template().tpmt())
}

/// Finds the persistent EK matching `template` (and the certificate key, if any), else
/// creates the primary, and checks it against the certificate.
fn locate<T: Transport>(
    tpm: &mut Tpm<T>,
    kind: EkKind,
    template: Vec<u8>,
    persistent: &[(u32, ObjectPublic)],
    cert: Option<(u32, &[u8])>,
) -> Result<Ek, Error> {
    let what = kind.template_name();
    let summary = cert.map(|(_, der)| cert::summarize(der)).transpose();
    let summary = summary.map_err(|e| public_error(&format!("{what} EK certificate"), e))?;
    let cert_key = match &summary {
        Some(s) => Some(
            PublicKey::from_spki_der(s.spki)
                .map_err(|e| public_error(&format!("{what} EK certificate key"), e))?,
        ),
        None => None,
    };
    let head_len = unique_offset(&template)
        .ok_or_else(|| public_error(&format!("{what} EK template"), "does not parse"))?;
    let head = template.get(..head_len).unwrap_or_default();

    let mut found = None;
    for (handle, obj) in persistent {
        let tpmt = obj.public.get(2..).unwrap_or_default();
        if !tpmt.starts_with(head) || unique_offset(tpmt) != Some(head_len) {
            continue;
        }
        let Ok(p) = Public::decode(&obj.public) else {
            continue;
        };
        if cert_key.is_none_or(|k| p.key.same_key(&k)) {
            found = Some((Some(*handle), obj.clone()));
            break;
        }
        log::warn!(
            "persistent EK {handle:#010x} matches the {what} template but not its certificate"
        );
    }
    let (handle, obj) = match found {
        Some(f) => f,
        None => {
            let mut scope = tpm.scope();
            let (_, obj) = scope.create_primary_tracked(RH_ENDORSEMENT, &template)?;
            (None, obj)
        }
    };
    let public = Public::decode(&obj.public).map_err(|e| public_error(what, e))?;
    if let (Some(k), Some((nv_index, _))) = (&cert_key, cert)
        && !public.key.same_key(k)
    {
        return Err(Error::EkMismatch {
            template: what,
            nv_index,
        });
    }
    let public_hash = public
        .key
        .public_hash()
        .map_err(|e| public_error(what, e))?;
    Ok(Ek {
        kind,
        nv_index: cert.map(|(i, _)| i),
        certificate: cert.map(|(_, der)| der.to_vec()),
        public: obj.public.clone(),
        name: obj.name.clone(),
        handle,
        template,
        public_hash,
    })
}

/// Makes `ek` usable in a command: its persistent handle, or a fresh CreatePrimary tracked by
/// `scope` (flushed when the scope ends). Checks the object is still the same key.
///
/// # Errors
/// TPM/transport errors; [`Error::Public`] if the TPM now holds a different key.
pub fn load<T: Transport>(scope: &mut Scope<'_, T>, ek: &Ek) -> Result<u32, Error> {
    if let Some(h) = ek.handle {
        return Ok(h);
    }
    let (h, obj) = scope.create_primary_tracked(RH_ENDORSEMENT, &ek.template)?;
    if obj.public != ek.public {
        return Err(public_error(
            ek.kind.template_name(),
            "CreatePrimary returned a different EK than discovery found",
        ));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_names() {
        for k in EkKind::ALL {
            assert_eq!(EkKind::parse(k.as_str()), Some(k));
            assert!(in_range(k.cert_index(), NV_EK_RANGE));
        }
        assert_eq!(EkKind::parse("rsa4096"), None);
    }

    #[test]
    fn stm_padded_blob_trims_to_the_certificate() {
        let blob = ekattest_testkit::testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.nv.bin");
        let der = ekattest_testkit::testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der");
        assert_eq!(blob.len(), 1600);
        assert_eq!(nv::first_object(&blob).unwrap(), &der[..]);
    }

    #[test]
    fn stm_certificate_behind_either_pc_client_header_trims_to_the_der() {
        let der = ekattest_testkit::testdata::real_ek("leaf/stm-st33htphahb4-rsa2048.der");
        let len = u16::try_from(der.len()).unwrap();
        // 7-byte TCG_PCCLIENT_STORED_CERT + TCG_FULL_CERT: LLLL counts the 10 02 tag too.
        let mut full = vec![0x10, 0x01, 0x00];
        full.extend_from_slice(&(len + 2).to_be_bytes());
        full.extend_from_slice(&[0x10, 0x02]);
        full.extend_from_slice(&der);
        full.resize(1600, 0xFF);
        assert_eq!(certificate_in_nv(0x01C0_0002, &full).unwrap(), &der[..]);
        // 5-byte form: LLLL is the DER length.
        let mut short = vec![0x10, 0x01, 0x00];
        short.extend_from_slice(&len.to_be_bytes());
        short.extend_from_slice(&der);
        assert_eq!(certificate_in_nv(0x01C0_0002, &short).unwrap(), &der[..]);
        // The 7-byte form with the 5-byte form's length: named, with the index.
        full[3..5].copy_from_slice(&len.to_be_bytes());
        let err = certificate_in_nv(0x01C0_0002, &full)
            .unwrap_err()
            .to_string();
        assert!(err.contains("0x01c00002"), "{err}");
        assert!(
            err.contains("`10 01 00 LLLL 10 02` says LLLL = 1169"),
            "{err}"
        );
    }

    #[test]
    fn pick_names_what_exists() {
        let e = Endorsement::default().pick(Some(EkKind::P256)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no p256 endorsement key found on this TPM (found: none)"
        );
    }
}
