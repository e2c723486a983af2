//! `ekattestctl ek verify`: EK validation against a document, as the server would run it.
//!
//! Reads files, selects the policy for providedMethods `[tpm_ek]`, runs `ek::validate` and
//! the SPIFFE ID template, and prints the outcome as text or JSON. Never touches the network.

use std::error::Error as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use crate::config::{Document, Method, Policy};
use crate::ek::{self, Check, Evidence, Verdict};
use ekattest_protocol::tpm::public::Public;
use serde_json::{Value as Json, json};

use super::files;

/// What `ekattestctl ek verify` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `--config`: the AgentAttestation document.
    pub config: PathBuf,
    /// `--cert`: the EK certificate (PEM, DER or a raw NV blob).
    pub cert: Option<PathBuf>,
    /// `--chain`: the certificates the device sends (PEM blocks or concatenated DER).
    pub chain: Option<PathBuf>,
    /// `--ek-public`: the EK TPM2B_PUBLIC.
    pub ek_public: Option<PathBuf>,
    /// `--trust-domain`: render `spiffe://TD/...` instead of the path alone.
    pub trust_domain: Option<String>,
    /// `--json`: one JSON object instead of text.
    pub json: bool,
}

/// Runs `ekattestctl ek verify`: prints the verdict (text, or JSON with `json`). Exit 0
/// accepted, 1 rejected, 2 unreadable file or invalid document.
#[must_use]
pub fn run(args: &Args) -> ExitCode {
    match verify(args) {
        Ok(outcome) => {
            outcome.print(args.json);
            if outcome.accepted() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            if args.json {
                println!("{}", json!({ "verdict": "error", "error": e }));
            }
            eprintln!("ekattestctl: {e}");
            ExitCode::from(2)
        }
    }
}

enum Outcome {
    Accepted {
        policy: String,
        verdict: Verdict,
        spiffe_id: String,
    },
    Rejected {
        policy: Option<String>,
        error: String,
        reasons: Vec<String>,
        verdict: Option<Verdict>,
    },
}

/// Setup errors (unreadable file, invalid document) are `Err`; judgments are `Ok`, and so is
/// a `--cert` or `--chain` file that was read but holds no usable certificate: corrupt PEM is
/// rejected like corrupt DER (which only EK validation can tell apart from an NV blob), so
/// both exit 1.
fn verify(args: &Args) -> Result<Outcome, String> {
    let config = args.config.as_path();
    let doc = Document::load(config).map_err(|e| format!("{}: invalid: {e}", config.display()))?;
    let read = |flag: &str, p: &PathBuf| {
        files::read(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
    };
    let cert_bytes = args.cert.as_ref().map(|p| read("--cert", p)).transpose()?;
    let chain_bytes = args
        .chain
        .as_ref()
        .map(|p| read("--chain", p))
        .transpose()?;
    let unusable = |flag: &str, p: Option<&PathBuf>, e: String| Outcome::Rejected {
        policy: None,
        error: format!(
            "{flag} {} holds no usable certificate",
            p.map(|p| p.display().to_string()).unwrap_or_default()
        ),
        reasons: vec![e],
        verdict: None,
    };
    let cert = match cert_bytes.as_deref().map(files::first_certificate) {
        Some(Ok(der)) => Some(der),
        Some(Err(e)) => return Ok(unusable("--cert", args.cert.as_ref(), e)),
        None => None,
    };
    let chain = match chain_bytes.as_deref().map(files::certificates_der) {
        Some(Ok(der)) => der,
        Some(Err(e)) => return Ok(unusable("--chain", args.chain.as_ref(), e)),
        None => Vec::new(),
    };
    let ek_public = match &args.ek_public {
        Some(p) => Some(files::read(p).map_err(|e| format!("--ek-public {e}"))?),
        None => None,
    };
    let policy: &Policy = match doc.select(&[Method::TpmEk]) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Outcome::Rejected {
                policy: None,
                error: e.to_string(),
                reasons: Vec::new(),
                verdict: None,
            });
        }
    };
    let Some(tpm_ek) = policy.tpm_ek() else {
        return Err(format!("policy {:?} has no tpm_ek attestor", policy.name));
    };
    let ek_public = match ek_public.as_deref().map(Public::decode).transpose() {
        Ok(p) => p,
        Err(e) => {
            let e = ek::EkError::EkPublic(e);
            return Ok(Outcome::Rejected {
                policy: Some(policy.name.clone()),
                error: e.to_string(),
                reasons: sources(&e),
                verdict: None,
            });
        }
    };
    let evidence = Evidence {
        ek_cert: cert.as_deref(),
        ek_chain: &chain,
        ek_public,
    };
    let verdict = match ek::validate(&tpm_ek.ek, &evidence, SystemTime::now()) {
        Ok(v) => v,
        Err(e) => {
            return Ok(Outcome::Rejected {
                policy: Some(policy.name.clone()),
                error: e.to_string(),
                reasons: sources(&e),
                verdict: None,
            });
        }
    };
    match policy
        .spiffe_id
        .render(&verdict.attributes, args.trust_domain.as_deref())
    {
        Ok(spiffe_id) => Ok(Outcome::Accepted {
            policy: policy.name.clone(),
            verdict,
            spiffe_id,
        }),
        Err(e) => Ok(Outcome::Rejected {
            policy: Some(policy.name.clone()),
            error: e.to_string(),
            reasons: vec![format!("spiffeIdTemplate {}", policy.spiffe_id)],
            verdict: Some(verdict),
        }),
    }
}

fn sources(e: &ek::EkError) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out
}

/// The check's stable name (as in the server's logs) and the config field behind it.
fn check_name(c: Check) -> &'static str {
    c.as_str()
}

fn check_field(c: Check) -> &'static str {
    match c {
        Check::Chain => "caCerts",
        Check::AllowList => "allowedHashes",
    }
}

/// The seed's log format: `tpm_ek:tpm_ek.public_hash="..."`.
fn seed_attributes(v: &Verdict) -> Vec<String> {
    v.attributes
        .iter()
        .map(|(name, value)| format!("tpm_ek:tpm_ek.{name}={value:?}"))
        .collect()
}

fn attributes_json(v: &Verdict) -> Json {
    let map: serde_json::Map<String, Json> = v
        .attributes
        .iter()
        .map(|(name, value)| (format!("tpm_ek.{name}"), Json::from(value)))
        .collect();
    Json::Object(map)
}

impl Outcome {
    fn accepted(&self) -> bool {
        matches!(self, Outcome::Accepted { .. })
    }

    fn print(&self, as_json: bool) {
        if as_json {
            println!("{}", self.to_json());
            return;
        }
        match self {
            Outcome::Accepted {
                policy,
                verdict,
                spiffe_id,
            } => {
                println!("verdict: accepted");
                println!("policy: {policy}");
                let c = verdict.passed;
                println!("passed check: {} ({})", check_name(c), check_field(c));
                println!("agentAttestationAttributes:");
                for a in seed_attributes(verdict) {
                    println!("  {a}");
                }
                println!("spiffe_id: {spiffe_id}");
                for w in &verdict.warnings {
                    println!("warning: {w}");
                }
            }
            Outcome::Rejected {
                policy,
                error,
                reasons,
                verdict,
            } => {
                println!("verdict: rejected");
                if let Some(p) = policy {
                    println!("policy: {p}");
                }
                println!("error: {error}");
                for r in reasons {
                    println!("reason: {r}");
                }
                if let Some(v) = verdict {
                    let c = v.passed;
                    println!("passed check: {} ({})", check_name(c), check_field(c));
                    println!("agentAttestationAttributes:");
                    for a in seed_attributes(v) {
                        println!("  {a}");
                    }
                }
            }
        }
    }

    fn to_json(&self) -> Json {
        match self {
            Outcome::Accepted {
                policy,
                verdict,
                spiffe_id,
            } => json!({
                "verdict": "accepted",
                "policy": policy,
                "passed_check": check_name(verdict.passed),
                "attributes": attributes_json(verdict),
                "agent_attestation_attributes": seed_attributes(verdict),
                "spiffe_id": spiffe_id,
                "warnings": verdict.warnings,
            }),
            Outcome::Rejected {
                policy,
                error,
                reasons,
                verdict,
            } => json!({
                "verdict": "rejected",
                "policy": policy,
                "error": error,
                "reasons": reasons,
                "passed_check": verdict.as_ref().map(|v| check_name(v.passed)),
                "attributes": verdict.as_ref().map(attributes_json),
            }),
        }
    }
}
