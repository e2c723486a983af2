//! Independent implementations to test our code against: openssl and tpm2-tools.
//!
//! - [`openssl_public_hash`]: the seed's pipeline `openssl x509 -pubkey -noout | openssl pkey
//!   -pubin -outform DER | sha256sum`, i.e. `tpm_ek.public_hash`.
//! - [`tpm2_makecredential`]: `tpm2_makecredential -T none` (tpm2-tss's MakeCredential, no
//!   TPM needed), output in tpm2-tools' file format.
//! - [`Device::tpm2_create_ak`] and [`Device::tpm2_activatecredential`]: an AK made and a
//!   credential activated with tpm2-tools, to cross-check the server's MakeCredential and the
//!   agent's AK without using either.
//!
//! Oracles must stay independent of our code: they never call into the protocol, agent or
//! server crates. Scratch files go into private temporary directories, never the cwd.

use std::fs;
use std::path::{Path, PathBuf};

use super::ca::read;
use super::device::EkKind;
use super::tool::{self, os_args};
use super::{Device, Error, Result};

/// Magic and version that start a credential in tpm2-tools' file format.
const CREDENTIAL_HEADER: [u8; 8] = [0xBA, 0xDC, 0xC0, 0xDE, 0, 0, 0, 1];

/// Attributes of the AK made by [`Device::tpm2_create_ak`]: the template of
/// `testdata/make-credential` (`0x00050072`).
const AK_ATTRIBUTES: &str = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign";

/// SHA-256 of the certificate's (or PEM public key's) DER SubjectPublicKeyInfo as lowercase
/// hex, computed by `openssl x509 [-inform DER] -in CERT -pubkey -noout`, `openssl pkey
/// -pubin -outform DER` and `sha256sum`: the seed's pipeline. PEM or DER input is detected.
///
/// # Errors
/// Tool errors (missing openssl/sha256sum, unparsable certificate), file errors.
pub fn openssl_public_hash(cert: &Path) -> Result<String> {
    let dir = scratch()?;
    let head = read(cert)?;
    let pem_pub = dir.path().join("pub.pem");
    let der_pub = dir.path().join("pub.der");
    if head.starts_with(b"-----BEGIN PUBLIC KEY-----") {
        fs::copy(cert, &pem_pub).map_err(|source| Error::Io {
            op: "copy",
            path: cert.to_owned(),
            source,
        })?;
    } else {
        let form = if head.starts_with(b"-----BEGIN") {
            "PEM"
        } else {
            "DER"
        };
        let out = tool::run(
            "openssl",
            &os_args!["x509", "-inform", form, "-in", cert, "-pubkey", "-noout"],
            tool::SHORT,
        )?;
        fs::write(&pem_pub, &out.stdout).map_err(|source| Error::Io {
            op: "write",
            path: pem_pub.clone(),
            source,
        })?;
    }
    tool::run(
        "openssl",
        &os_args![
            "pkey", "-pubin", "-in", pem_pub, "-outform", "DER", "-out", der_pub
        ],
        tool::SHORT,
    )?;
    let out = tool::run("sha256sum", &os_args![der_pub], tool::SHORT)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hash = text.split_whitespace().next().unwrap_or_default();
    if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hash.to_ascii_lowercase())
    } else {
        Err(Error::Unexpected {
            what: "sha256sum".into(),
            detail: text.into_owned(),
        })
    }
}

/// `tpm2_makecredential -T none -u EK -s SECRET -n <AK NAME HEX> -o OUT`: a credential for
/// the EK (its TPM2B_PUBLIC bytes) and the AK Name (binary, with the nameAlg prefix),
/// returned as OUT's bytes: `BADCC0DE 00000001 TPM2B_ID_OBJECT TPM2B_ENCRYPTED_SECRET`.
/// Random each call (seed / ephemeral key).
///
/// # Errors
/// [`Error::Invalid`] for an empty secret or AK name; tool errors (tpm2_makecredential
/// rejects an unparsable EK public or a secret longer than the EK's digest size).
pub fn tpm2_makecredential(
    ek_tpm2b_public: &[u8],
    secret: &[u8],
    ak_name: &[u8],
) -> Result<Vec<u8>> {
    if secret.is_empty() || ak_name.is_empty() {
        return Err(Error::Invalid(
            "tpm2_makecredential needs a non-empty secret and AK name".into(),
        ));
    }
    let dir = scratch()?;
    let ek = dir.path().join("ek.pub");
    let sec = dir.path().join("secret.bin");
    let out = dir.path().join("credential.out");
    write_bytes(&ek, ek_tpm2b_public)?;
    write_bytes(&sec, secret)?;
    let name = hex::encode(ak_name);
    tool::run(
        "tpm2_makecredential",
        &os_args!["-T", "none", "-u", ek, "-s", sec, "-n", name, "-o", out],
        tool::SHORT,
    )?;
    let cred = read(&out)?;
    if !cred.starts_with(&CREDENTIAL_HEADER) {
        return Err(Error::Unexpected {
            what: "tpm2_makecredential".into(),
            detail: format!(
                "output does not start with BADCC0DE 00000001: {} bytes",
                cred.len()
            ),
        });
    }
    Ok(cred)
}

/// An attestation key created on a device with tpm2-tools (see [`Device::tpm2_create_ak`]).
#[derive(Debug, Clone)]
pub struct Ak {
    /// Saved context (tpm2-tools `-c` file), reloadable while the device runs.
    pub context: PathBuf,
    /// TPM2B_PUBLIC of the AK (with its UINT16 size).
    pub public: Vec<u8>,
    /// The AK Name: nameAlg (`000b`) || SHA-256(TPMT_PUBLIC), as the TPM computes it.
    pub name: Vec<u8>,
}

impl Device {
    /// Creates an AK with tpm2-tools: `tpm2_createprimary -C o -g sha256 -G
    /// ecc256:ecdsa-sha256:null -a "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|
    /// restricted|sign" -c ak.ctx`, then `tpm2_readpublic -c ak.ctx -o PUB -n NAME`, and
    /// flushes the transient objects (the saved context stays usable).
    ///
    /// # Errors
    /// Tool errors; [`Error::Unexpected`] if the Name file is empty.
    pub fn tpm2_create_ak(&self) -> Result<Ak> {
        let dir = self.work_dir();
        let context = dir.join("ak.ctx");
        let public = dir.join("ak.pub");
        let name = dir.join("ak.name");
        let created = self
            .tpm2(
                "tpm2_createprimary",
                &os_args![
                    "-C",
                    "o",
                    "-g",
                    "sha256",
                    "-G",
                    "ecc256:ecdsa-sha256:null",
                    "-a",
                    AK_ATTRIBUTES,
                    "-c",
                    context
                ],
            )
            .and_then(|_| {
                self.tpm2(
                    "tpm2_readpublic",
                    &os_args!["-c", context, "-o", public, "-n", name],
                )
            });
        let flushed = self.flush_transient();
        created?;
        flushed?;
        let ak = Ak {
            public: read(&public)?,
            name: read(&name)?,
            context,
        };
        if ak.name.len() != 34 {
            return Err(Error::Unexpected {
                what: "tpm2_readpublic -n".into(),
                detail: format!("AK name of {} bytes, expected 34", ak.name.len()),
            });
        }
        Ok(ak)
    }

    /// Activates `credential` (tpm2-tools file format) for `ak` with the EK of `kind` using
    /// tpm2-tools, returns the recovered secret. EKs without userWithAuth (L-1 RSA-2048, L-2
    /// P-256) are authorized with a policy session in the EK's nameAlg:
    /// `tpm2_startauthsession --policy-session -g ALG -S s.ctx`, `tpm2_policysecret -S s.ctx
    /// -c e`, `tpm2_activatecredential -c ak.ctx -C EK -i CRED -o OUT -P session:s.ctx`;
    /// EKs with userWithAuth (swtpm's P-384, RSA-3072) with the empty password. The EK is the
    /// persistent handle, or for P-256 a context from `tpm2_createek -G ecc`. Sessions and
    /// transient objects are flushed afterwards, also on error.
    ///
    /// # Errors
    /// Tool errors, e.g. `0x1df` (integrity) for a credential made for another AK or EK.
    pub fn tpm2_activatecredential(
        &self,
        ak: &Ak,
        kind: EkKind,
        credential: &[u8],
    ) -> Result<Vec<u8>> {
        let ek_pub = self.ek_public_file(kind)?;
        let (name_alg, user_with_auth) = ek_auth(&ek_pub)?;
        let ek = self.ek_context(kind)?;
        let dir = self.work_dir();
        let cred = dir.join("activate.cred");
        let out = dir.join("activate.out");
        let session = dir.join("activate.session");
        write_bytes(&cred, credential)?;
        let result = if user_with_auth {
            self.tpm2(
                "tpm2_activatecredential",
                &os_args!["-c", ak.context, "-C", ek, "-i", cred, "-o", out],
            )
        } else {
            let auth = format!("session:{}", session.display());
            self.tpm2(
                "tpm2_startauthsession",
                &os_args!["--policy-session", "-g", name_alg, "-S", session],
            )
            .and_then(|_| self.tpm2("tpm2_policysecret", &os_args!["-S", session, "-c", "e"]))
            .and_then(|_| {
                self.tpm2(
                    "tpm2_activatecredential",
                    &os_args![
                        "-c", ak.context, "-C", ek, "-i", cred, "-o", out, "-P", auth
                    ],
                )
            })
        };
        // The TPM flushes the policy session only when the command using it succeeds.
        if session.exists() {
            let _ = self.tpm2("tpm2_flushcontext", &os_args![session]);
            let _ = fs::remove_file(&session);
        }
        let flushed = self.flush_transient();
        result?;
        flushed?;
        read(&out)
    }
}

/// nameAlg (tpm2-tools spelling, e.g. `sha384`) and whether userWithAuth is set, from
/// `tpm2_print -t TPM2B_PUBLIC`.
fn ek_auth(tpm2b_public: &Path) -> Result<(String, bool)> {
    let out = tool::run(
        "tpm2_print",
        &os_args!["-t", "TPM2B_PUBLIC", tpm2b_public],
        tool::SHORT,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value_after = |key: &str| {
        let mut lines = text.lines().skip_while(|l| l.trim() != key);
        lines.next();
        lines
            .next()
            .and_then(|l| l.trim().strip_prefix("value:"))
            .map(|v| v.trim().to_owned())
    };
    match (value_after("name-alg:"), value_after("attributes:")) {
        (Some(alg), Some(attrs)) => Ok((alg, attrs.split('|').any(|a| a == "userwithauth"))),
        _ => Err(Error::Unexpected {
            what: "tpm2_print -t TPM2B_PUBLIC".into(),
            detail: format!("no name-alg/attributes in: {text}"),
        }),
    }
}

fn scratch() -> Result<tempfile::TempDir> {
    super::ca::temp_dir("ekattest-oracle.").map(|(dir, _)| dir)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(path, bytes).map_err(|source| Error::Io {
        op: "write",
        path: path.to_owned(),
        source,
    })
}
