//! The operator commands `tpm info` and `tpm activate`: how operators debug a device's TPM,
//! and how integration checks drive the TPM layer as a process.
//!
//! Each command opens the transport, runs Startup, flushes leftovers where there is no
//! resource manager, does its work and prints to the writer it is given. Output formats are
//! API (tests and scripts parse the JSON). Secrets are printed only by `activate`, only to
//! that writer, never logged.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use serde_json::{Value, json};

use crate::cert;
use crate::error::Error;
use crate::spec::{SpecError, TpmSpec};
use crate::tpm::activate::{self, Credential};
use crate::tpm::ak::{self, Ak, AkOptions};
use crate::tpm::commands::{PT_MANUFACTURER, Tpm};
use crate::tpm::ek::{self, Ek, EkKind, Endorsement};
use crate::tpm::{Transport, chardev};

/// A parsed operator command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `tpm info`: list EKs, certificates, public hashes and the AK Name.
    Info {
        /// Transport.
        spec: TpmSpec,
        /// Print JSON instead of text.
        json: bool,
    },
    /// `tpm activate`: ActivateCredential on a tpm2-tools credential file.
    Activate {
        /// Transport.
        spec: TpmSpec,
        /// The credential file.
        credential: PathBuf,
        /// Which EK; the first found if `None`.
        ek: Option<EkKind>,
    },
}

/// Parses `--tpm SPEC` (default `/dev/tpmrm0`).
///
/// # Errors
/// [`SpecError`] for a malformed spec.
pub fn parse_spec(spec: Option<&str>) -> Result<TpmSpec, SpecError> {
    TpmSpec::parse(spec.unwrap_or(chardev::TPMRM0))
}

/// Parses `--ek KIND`.
///
/// # Errors
/// A message listing the accepted kinds.
pub fn parse_ek(kind: &str) -> Result<EkKind, String> {
    EkKind::parse(kind).ok_or_else(|| {
        let all: Vec<_> = EkKind::ALL.iter().map(|k| k.as_str()).collect();
        format!(
            "unknown EK kind {kind:?} (expected one of {})",
            all.join(", ")
        )
    })
}

/// Runs `command`, writing its output to `out`.
///
/// # Errors
/// [`Error`] naming what failed.
pub fn run(command: &Command, out: &mut dyn Write) -> Result<(), Error> {
    match command {
        Command::Info { spec, json } => {
            let mut tpm = open(spec)?;
            let started = Instant::now();
            let info = gather(&mut tpm)?;
            log::info!("tpm info took {:?}", started.elapsed());
            let text = if *json {
                let mut v = info_json(spec, &info);
                if let Value::Object(m) = &mut v {
                    m.insert("elapsed_ms".into(), json!(started.elapsed().as_millis()));
                }
                format!("{v:#}\n")
            } else {
                info_text(spec, &info)
            };
            out.write_all(text.as_bytes()).map_err(Error::Output)
        }
        Command::Activate {
            spec,
            credential,
            ek,
        } => {
            let bytes = std::fs::read(credential).map_err(|source| Error::ReadCredential {
                path: credential.clone(),
                source,
            })?;
            let cred =
                Credential::decode_tpm2_tools(&bytes).map_err(|source| Error::Credential {
                    path: credential.clone(),
                    source,
                })?;
            let mut tpm = open(spec)?;
            let found = ek::discover(&mut tpm)?;
            let chosen = found.pick(*ek)?;
            let started = Instant::now();
            let secret = activate::activate(&mut tpm, chosen, &AkOptions::default(), &cred)?;
            log::info!(
                "ActivateCredential with the {} EK took {:?}",
                chosen.kind.as_str(),
                started.elapsed()
            );
            writeln!(out, "{}", hex::encode(secret)).map_err(Error::Output)
        }
    }
}

/// Opens the transport, runs Startup and (without a resource manager) flushes leftovers.
///
/// # Errors
/// [`Error::Open`] or a TPM error.
pub fn open(spec: &TpmSpec) -> Result<Tpm<Box<dyn Transport>>, Error> {
    let transport = spec.open().map_err(Error::Open)?;
    let mut tpm = Tpm::new(transport);
    tpm.startup_clear()?;
    if spec.needs_flush() {
        let n = tpm.flush_leftovers()?;
        if n > 0 {
            log::info!("flushed {n} leftover transient handle(s)");
        }
    }
    Ok(tpm)
}

/// What `tpm info` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// TPM_PT_MANUFACTURER, if reported.
    pub manufacturer: Option<u32>,
    /// EKs and chain.
    pub endorsement: Endorsement,
    /// The default AK.
    pub ak: Ak,
}

/// Collects everything `tpm info` prints.
///
/// # Errors
/// TPM errors.
pub fn gather<T: Transport>(tpm: &mut Tpm<T>) -> Result<Info, Error> {
    let manufacturer = tpm.property(PT_MANUFACTURER)?;
    let endorsement = ek::discover(tpm)?;
    let ak = ak::read(tpm, &AkOptions::default())?;
    Ok(Info {
        manufacturer,
        endorsement,
        ak,
    })
}

fn manufacturer_text(id: u32) -> String {
    let text: String = id
        .to_be_bytes()
        .iter()
        .filter(|b| b.is_ascii_graphic())
        .map(|b| char::from(*b))
        .collect();
    format!("{text} (id:{id:08X})")
}

fn cert_json(ek: &Ek) -> Value {
    let Some(der) = &ek.certificate else {
        return Value::Null;
    };
    match cert::summarize(der) {
        Ok(s) => json!({ "subject": s.subject, "issuer": s.issuer, "serial": s.serial }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// The JSON form of [`Info`].
#[must_use]
pub fn info_json(spec: &TpmSpec, info: &Info) -> Value {
    let eks: Vec<Value> = info
        .endorsement
        .eks
        .iter()
        .map(|ek| {
            json!({
                "kind": ek.kind.as_str(),
                "template": ek.kind.template_name(),
                "key_type": ek.kind.key_type(),
                "nv_index": ek.nv_index.map(|i| format!("{i:#010x}")),
                "handle": ek.handle.map(|h| format!("{h:#010x}")),
                "certificate": cert_json(ek),
                "public_hash": hex::encode(ek.public_hash),
                "public": hex::encode(&ek.public),
                "name": hex::encode(&ek.name),
            })
        })
        .collect();
    json!({
        "tpm": spec.to_string(),
        "manufacturer": info.manufacturer.map(manufacturer_text),
        "eks": eks,
        "chain_certificates": info.endorsement.chain.len(),
        "ak": { "name": hex::encode(&info.ak.name), "public": hex::encode(&info.ak.public) },
    })
}

/// The text form of [`Info`].
#[must_use]
pub fn info_text(spec: &TpmSpec, info: &Info) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let m = info
        .manufacturer
        .map_or_else(|| "unknown".to_owned(), manufacturer_text);
    let _ = writeln!(s, "TPM {spec}, manufacturer {m}");
    for ek in &info.endorsement.eks {
        let _ = writeln!(s, "EK {} ({})", ek.kind.as_str(), ek.kind.template_name());
        let _ = writeln!(s, "  key type:    {}", ek.kind.key_type());
        match ek.nv_index {
            Some(i) => {
                let _ = writeln!(s, "  certificate: NV {i:#010x}");
            }
            None => {
                let _ = writeln!(s, "  certificate: none (public key only)");
            }
        }
        if let Some(der) = &ek.certificate {
            match cert::summarize(der) {
                Ok(c) => {
                    let _ = writeln!(s, "  subject:     {}", c.subject);
                    let _ = writeln!(s, "  issuer:      {}", c.issuer);
                    let _ = writeln!(s, "  serial:      {}", c.serial);
                }
                Err(e) => {
                    let _ = writeln!(s, "  certificate: {e}");
                }
            }
        }
        match ek.handle {
            Some(h) => {
                let _ = writeln!(s, "  handle:      {h:#010x} (persistent)");
            }
            None => {
                let _ = writeln!(s, "  handle:      none (created from the template)");
            }
        }
        let _ = writeln!(s, "  public_hash: {}", hex::encode(ek.public_hash));
    }
    let _ = writeln!(s, "EK chain certificates: {}", info.endorsement.chain.len());
    let _ = writeln!(s, "AK name: {}", hex::encode(&info.ak.name));
    s
}
