//! A private swtpm-localca for one test run.
//!
//! [`Ca::create`] writes a `swtpm-localca.conf` (statedir, signingkey, issuercert,
//! certserial), a `swtpm-localca.options` (platform certificate fields) and a
//! `swtpm_setup.conf` (create_certs_tool = swtpm_localca with that configuration) into a
//! fresh temporary directory, then makes swtpm_localca create its root CA
//! (`swtpm-localca-rootca-cert.pem`, RSA-3072, the trust anchor) and the intermediate
//! (`issuercert.pem`) by signing one throw-away certificate.
//!
//! It must never use `/etc/swtpm*` or `/var/lib/swtpm-localca`. Concurrent signing with one
//! `Ca` is safe: swtpm_localca takes an exclusive `flock` on `.lock.swtpm-localca` in the
//! statedir around the serial-number update (the harness test checks serials stay unique).

use std::fs;
use std::path::{Path, PathBuf};

use super::tool::os_args;
use super::{Error, Result, tool};

/// P-256 generator point: a valid public key for the throw-away certificate that makes
/// swtpm_localca create the CA (SEC 2, section 2.4.2).
const P256_GX: &str = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
const P256_GY: &str = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";

/// TPM identity fields swtpm_setup 0.7.1 puts into its EK certificates; the P-256 EK
/// certificate the harness adds uses the same ones.
pub(crate) const TPM_IDENTITY: [&str; 12] = [
    "--tpm-spec-family",
    "2.0",
    "--tpm-spec-level",
    "0",
    "--tpm-spec-revision",
    "164",
    "--tpm-manufacturer",
    "id:00001014",
    "--tpm-model",
    "swtpm",
    "--tpm-version",
    "id:20191023",
];

/// A per-run swtpm-localca: root CA, intermediate and signing key in a temporary directory
/// that is deleted on drop. Share it by reference across threads to provision devices in
/// parallel.
#[derive(Debug)]
pub struct Ca {
    dir: tempfile::TempDir,
    localca_conf: PathBuf,
    setup_conf: PathBuf,
    root: PathBuf,
    intermediate: PathBuf,
}

impl Ca {
    /// Creates the CA in a fresh temporary directory and forces creation of its root and
    /// intermediate certificates, so [`Ca::root_cert_pem`] exists when this returns.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory or config files cannot be written;
    /// [`Error::ToolMissing`]/[`Error::ToolFailed`] if swtpm_localca is missing or fails.
    pub fn create() -> Result<Ca> {
        let (dir, base) = temp_dir("ekattest-ca.")?;
        let state = base.join("localca");
        mkdir(&state)?;
        let localca_conf = base.join("swtpm-localca.conf");
        let options = base.join("swtpm-localca.options");
        let setup_conf = base.join("swtpm_setup.conf");
        write(
            &localca_conf,
            &format!(
                "statedir = {s}\nsigningkey = {s}/signkey.pem\nissuercert = {s}/issuercert.pem\n\
                 certserial = {s}/certserial\n",
                s = state.display()
            ),
        )?;
        write(
            &options,
            "--platform-manufacturer ekattest\n--platform-version 2.1\n--platform-model swtpm\n",
        )?;
        write(
            &setup_conf,
            &format!(
                "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\n\
                 create_certs_tool_options = {}\nactive_pcr_banks = sha256\n",
                localca_conf.display(),
                options.display()
            ),
        )?;
        let ca = Ca {
            root: state.join("swtpm-localca-rootca-cert.pem"),
            intermediate: state.join("issuercert.pem"),
            dir,
            localca_conf,
            setup_conf,
        };
        // swtpm_localca creates the root CA and intermediate on its first signature.
        let scratch = base.join("bootstrap");
        mkdir(&scratch)?;
        ca.sign_ek_p256(P256_GX, P256_GY, &scratch)?;
        for f in [&ca.root, &ca.intermediate] {
            if !f.is_file() {
                return Err(Error::Unexpected {
                    what: "swtpm_localca".into(),
                    detail: format!("it did not create {}", f.display()),
                });
            }
        }
        Ok(ca)
    }

    /// The root CA certificate (PEM, RSA-3072, self-signed): the trust anchor.
    pub fn root_cert_pem(&self) -> &Path {
        &self.root
    }

    /// The intermediate (issuer) certificate (PEM) that signs the EK certificates.
    pub fn intermediate_cert_pem(&self) -> &Path {
        &self.intermediate
    }

    /// The `swtpm_setup.conf` to pass with `swtpm_setup --config`.
    pub fn setup_conf(&self) -> &Path {
        &self.setup_conf
    }

    /// The `swtpm-localca.conf` to pass with `swtpm_localca --configfile`.
    pub fn localca_conf(&self) -> &Path {
        &self.localca_conf
    }

    /// The CA's temporary directory (deleted when the `Ca` is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Signs an EK certificate for the P-256 public key (`x`, `y` as lowercase hex, 32 bytes
    /// each) with the swtpm identity fields; returns the path of the DER certificate, which
    /// swtpm_localca writes as `ek.cert` in `out_dir`.
    pub(crate) fn sign_ek_p256(&self, x: &str, y: &str, out_dir: &Path) -> Result<PathBuf> {
        let ek = format!("x={x},y={y},id=secp256r1");
        let mut args: Vec<&std::ffi::OsStr> = os_args![
            "--type",
            "ek",
            "--ek",
            ek,
            "--dir",
            out_dir,
            "--tpm2",
            "--configfile",
            self.localca_conf,
        ]
        .to_vec();
        args.extend(TPM_IDENTITY.iter().map(std::ffi::OsStr::new));
        tool::run("swtpm_localca", &args, tool::SHORT)?;
        let cert = out_dir.join("ek.cert");
        if cert.is_file() {
            Ok(cert)
        } else {
            Err(Error::Unexpected {
                what: "swtpm_localca".into(),
                detail: format!("it reported success but wrote no {}", cert.display()),
            })
        }
    }
}

/// `path` made absolute against the current directory (read, never changed).
/// A new temporary directory `PREFIX...` under the system's, and its absolute path.
pub(crate) fn temp_dir(prefix: &str) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| Error::Io {
            op: "create a temporary directory in",
            path: std::env::temp_dir(),
            source,
        })?;
    let base = absolute(dir.path())?;
    Ok((dir, base))
}

pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| Error::Io {
        op: "make absolute",
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn mkdir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| Error::Io {
        op: "create directory",
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| Error::Io {
        op: "write",
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}
