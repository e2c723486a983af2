//! The `AgentAttestation` policy document: the seed's YAML format plus our extensions.
//!
//! ```yaml
//! section: AgentAttestation
//! schema: v1
//! spec:
//!   policies:
//!     - name: tpm_ek_policy
//!       spiffeIdTemplate: /agents/tpm/{{tpm_ek.public_hash}}   # ours, optional
//!       requiredAttestors:
//!         - type: tpm_ek
//!           config:
//!             caCerts: |                  # PEM, at least one of caCerts / allowedHashes
//!               -----BEGIN CERTIFICATE-----
//!               ...
//!             intermediateCerts: |        # PEM, optional, only used with caCerts
//!             allowedHashes: ["<64 hex digits>"]
//!             ekProfileCheck: enforce     # ours: enforce | warn
//!             allowSha1Signatures: false  # ours
//!             acceptExpiredEk: false      # ours: EK certificate outside its validity period
//! ```
//!
//! Parsing is all-or-nothing: [`Document::parse`] either returns a document whose every
//! certificate already sits in an [`ek::TrustStore`] and whose every
//! template is parsed, or an error naming the field path
//! (`spec.policies[0].requiredAttestors[0].config.allowedHashes[2]: not 64 hex digits`).
//! The caller keeps the previous document in force on error.
//!
//! The input is untrusted operator text: it is size-limited ([`MAX_DOCUMENT_BYTES`]) before
//! parsing and its YAML alias expansion is budgeted ([`MAX_NODES`], [`MAX_SCALAR_BYTES`]) so a
//! "billion laughs" document fails fast instead of exhausting memory. Never panics, never logs
//! (warnings are returned in [`Document::warnings`]).

mod budget;
mod pem_certs;
pub mod signed;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;
use serde::de::{self, Visitor};

use crate::ek::{self, ChainOptions, EkPolicy, ProfileMode, TrustStore};
use crate::spiffe::{SpiffeIdTemplate, TemplateError};

pub use pem_certs::PemProblem;

/// Largest accepted document, in bytes. Real documents with a full vendor CA bundle
/// (51 certificates) are about 100 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Largest number of YAML nodes visited while parsing, aliases expanded.
pub const MAX_NODES: usize = 1 << 20;
/// Largest total length of scalars visited while parsing, aliases expanded.
pub const MAX_SCALAR_BYTES: usize = 2 * MAX_DOCUMENT_BYTES;

/// The required `section` value.
pub const SECTION: &str = "AgentAttestation";
/// The supported `schema` value.
pub const SCHEMA: &str = "v1";

/// An attestation method (the seed's attestor `type` and the agent's `providedMethods`): the
/// wire protocol's closed set, so config and messages cannot disagree.
pub use ekattest_protocol::msg::Method;

/// A document that fails to load. Operator-caused: fix the document; the server keeps the
/// previous one. `path` fields are YAML paths such as `spec.policies[0].name`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Over [`MAX_DOCUMENT_BYTES`].
    #[error(
        "document is larger than {limit} bytes; split the CA bundle or remove unused certificates"
    )]
    TooLarge {
        /// [`MAX_DOCUMENT_BYTES`].
        limit: usize,
    },
    /// Not UTF-8.
    #[error("document is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// YAML alias expansion exceeds [`MAX_NODES`] or [`MAX_SCALAR_BYTES`].
    #[error(
        "document expands to more than {MAX_NODES} YAML nodes or {MAX_SCALAR_BYTES} bytes of \
         text (YAML anchors and aliases?); write the values out"
    )]
    TooComplex,
    /// Not YAML, or not the expected shape: unknown field, missing field, wrong type,
    /// unknown attestor type or profile mode. serde_yaml's message names the path and line.
    #[error("{0}")]
    Yaml(#[from] serde_norway::Error),
    /// A tab in the indentation (YAML allows spaces only).
    #[error("{0}")]
    Tab(ekattest_protocol::yaml::TabIndent),
    /// `section` or `schema` is not the supported one.
    #[error("{field}: expected {expected:?}, found {found:?}")]
    Header {
        /// `section` or `schema`.
        field: &'static str,
        /// What we support.
        expected: &'static str,
        /// What the document says.
        found: String,
    },
    /// A structural rule is broken (empty list, duplicate name, neither caCerts nor
    /// allowedHashes).
    #[error("{path}: {message}")]
    Invalid {
        /// The field path.
        path: String,
        /// What is wrong and what to do.
        message: &'static str,
    },
    /// An allowedHashes entry is not 64 hex digits.
    #[error(
        "{path}: not 64 hex digits (found {found:?}); compute it with `ekattestctl ek-hash FILE`"
    )]
    Hash {
        /// `...allowedHashes[i]`.
        path: String,
        /// The value (shortened).
        found: String,
    },
    /// caCerts or intermediateCerts holds no usable certificate (seed string).
    #[error("{path}: could not parse any PEM certificates ({problem})")]
    NoPemCertificates {
        /// `...config.caCerts` or `...config.intermediateCerts`.
        path: String,
        /// The first problem found.
        problem: PemProblem,
    },
    /// One block of caCerts or intermediateCerts is unusable while others are fine.
    #[error("{path}: PEM block {block} of {blocks}: {problem}; fix or remove that block")]
    PemBlock {
        /// `...config.caCerts` or `...config.intermediateCerts`.
        path: String,
        /// 1-based block number.
        block: usize,
        /// Number of PEM blocks in the field.
        blocks: usize,
        /// What is wrong with it.
        problem: PemProblem,
    },
    /// The certificates parse one by one but do not form a trust store.
    #[error("{path}: {source}")]
    TrustStore {
        /// `...config`.
        path: String,
        /// The EK layer's error.
        #[source]
        source: Box<ek::EkError>,
    },
    /// `spiffeIdTemplate` does not parse.
    #[error("{path}: {source}")]
    Template {
        /// `spec.policies[i].spiffeIdTemplate`.
        path: String,
        /// Why.
        #[source]
        source: TemplateError,
    },
}

/// A loaded, validated `AgentAttestation` document.
#[derive(Debug, Clone)]
pub struct Document {
    policies: Vec<Policy>,
    warnings: Vec<String>,
}

/// One entry of `spec.policies`.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `name`, unique in the document.
    pub name: String,
    /// `requiredAttestors`, in document order, at least one, no type twice.
    pub attestors: Vec<Attestor>,
    /// `spiffeIdTemplate`, or [`SpiffeIdTemplate::default`].
    pub spiffe_id: SpiffeIdTemplate,
    /// Whether `spiffeIdTemplate` was absent and the default applies.
    pub spiffe_id_is_default: bool,
}

impl Policy {
    /// The policy's `tpm_ek` attestor, if it requires one.
    #[allow(
        clippy::unnecessary_find_map,
        reason = "other attestor types will map to None"
    )]
    pub fn tpm_ek(&self) -> Option<&TpmEkConfig> {
        self.attestors.iter().find_map(|a| match a {
            Attestor::TpmEk(c) => Some(c),
        })
    }
}

/// One entry of `requiredAttestors`.
#[derive(Debug, Clone)]
pub enum Attestor {
    /// `type: tpm_ek`.
    TpmEk(TpmEkConfig),
}

impl Attestor {
    /// The attestor's method.
    pub fn method(&self) -> Method {
        match self {
            Attestor::TpmEk(_) => Method::TpmEk,
        }
    }
}

/// A `tpm_ek` attestor's config, built for [`ek::validate`].
#[derive(Debug, Clone)]
pub struct TpmEkConfig {
    /// The EK policy: trust store, allow-list, profile mode, chain options.
    pub ek: EkPolicy,
    /// Number of certificates in caCerts.
    pub ca_certs: usize,
    /// Number of certificates in intermediateCerts.
    pub intermediate_certs: usize,
}

impl Document {
    /// Reads and parses a document file (at most [`MAX_DOCUMENT_BYTES`] are read).
    ///
    /// # Errors
    /// [`ConfigError::Read`], or any error of [`Document::parse`].
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            file: file.to_owned(),
            source,
        };
        let f = std::fs::File::open(file).map_err(read_err)?;
        let mut bytes = Vec::new();
        f.take(MAX_DOCUMENT_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        Self::parse(&bytes)
    }

    /// Parses and validates a document; certificate validity warnings use the current time.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first problem found.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::parse_at(bytes, SystemTime::now())
    }

    /// [`Document::parse`] with an explicit time for certificate validity warnings.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first problem found.
    pub fn parse_at(bytes: &[u8], now: SystemTime) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(ConfigError::TooLarge {
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
            offset: e.valid_up_to(),
        })?;
        budget::check(text)?;
        let raw: RawDocument = serde_norway::from_str(text).map_err(|e| {
            ekattest_protocol::yaml::tab_in_indentation(text)
                .map_or(ConfigError::Yaml(e), ConfigError::Tab)
        })?;
        let fields = pem_fields(&raw);
        build(raw, now).map_err(|e| in_file_lines(e, text, &fields))
    }

    /// The policies, in document order (the order [`Document::select`] tries them).
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Non-fatal findings (expired CA certificates, duplicate hashes, intermediateCerts
    /// without caCerts), each prefixed with its field path. The daemon logs them at warn.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// One document holding the policies of `docs` in order: the server daemon's
    /// `policy-files`, each labelled (its path) for errors and warnings.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] if `docs` is empty or two documents share a policy name
    /// (the path is `LABEL: spec.policies[i].name`).
    pub fn merge(docs: Vec<(String, Document)>) -> Result<Self, ConfigError> {
        if docs.is_empty() {
            return Err(invalid(
                "spec.policies".to_owned(),
                "at least one policy is required; without one every agent is rejected",
            ));
        }
        let single = docs.len() == 1;
        let mut names: HashSet<String> = HashSet::new();
        let mut merged = Document {
            policies: Vec::new(),
            warnings: Vec::new(),
        };
        for (label, doc) in docs {
            for (i, policy) in doc.policies.into_iter().enumerate() {
                if !names.insert(policy.name.clone()) {
                    return Err(invalid(
                        format!("{label}: spec.policies[{i}].name"),
                        "duplicate policy name across policy files; give every policy its own name",
                    ));
                }
                merged.policies.push(policy);
            }
            for w in doc.warnings {
                merged
                    .warnings
                    .push(if single { w } else { format!("{label}: {w}") });
            }
        }
        Ok(merged)
    }
}

// ---- raw serde shape -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocument {
    section: String,
    schema: String,
    spec: RawSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    policies: Vec<RawPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    name: String,
    required_attestors: Vec<RawAttestor>,
    #[serde(default)]
    spiffe_id_template: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestor {
    // First in the struct so an unknown type is reported before its config's fields.
    #[serde(rename = "type")]
    kind: RawMethod,
    #[serde(default)]
    config: Option<RawTpmEkConfig>,
}

struct RawMethod(Method);

impl<'de> Deserialize<'de> for RawMethod {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The error is raised inside the visitor so serde_yaml attaches the `.type` path.
        struct V;
        impl Visitor<'_> for V {
            type Value = RawMethod;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attestor type name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<RawMethod, E> {
                Method::from_name(name).map(RawMethod).ok_or_else(|| {
                    let supported: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
                    E::custom(format_args!(
                        "unknown attestor type {name:?}; supported types: {}",
                        supported.join(", ")
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTpmEkConfig {
    #[serde(default)]
    ca_certs: Option<String>,
    #[serde(default)]
    intermediate_certs: Option<String>,
    #[serde(default)]
    allowed_hashes: Option<Vec<String>>,
    #[serde(default)]
    ek_profile_check: Option<RawProfileMode>,
    #[serde(default)]
    allow_sha1_signatures: Option<bool>,
    #[serde(default)]
    accept_expired_ek: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawProfileMode {
    Enforce,
    Warn,
}

// ---- validation ------------------------------------------------------------------------

/// The paths of the `caCerts` and `intermediateCerts` fields present, in document order.
fn pem_fields(raw: &RawDocument) -> Vec<String> {
    let mut out = Vec::new();
    for (i, policy) in raw.spec.policies.iter().enumerate() {
        for (j, attestor) in policy.required_attestors.iter().enumerate() {
            let Some(config) = &attestor.config else {
                continue;
            };
            let at = format!("spec.policies[{i}].requiredAttestors[{j}].config");
            if config.ca_certs.is_some() {
                out.push(format!("{at}.caCerts"));
            }
            if config.intermediate_certs.is_some() {
                out.push(format!("{at}.intermediateCerts"));
            }
        }
    }
    out
}

/// A PEM problem's line, counted within its field's value, as a line of the document
/// `text`: the value of the n-th `caCerts` field starts on the line after the n-th
/// `caCerts:` key for a block scalar (`|`, `>`), on the key's line otherwise. Errors that
/// cannot be placed (a flow-style document, say) keep the value's line.
fn in_file_lines(e: ConfigError, text: &str, fields: &[String]) -> ConfigError {
    let place = |path: &str, problem: PemProblem| -> PemProblem {
        let Some(key) = path.rsplit('.').next() else {
            return problem;
        };
        let nth = fields
            .iter()
            .filter(|f| f.ends_with(&format!(".{key}")))
            .position(|f| f == path);
        let start = nth.and_then(|n| {
            text.lines()
                .enumerate()
                .filter_map(|(i, line)| {
                    let t = line.trim_start().trim_start_matches("- ").trim_start();
                    let rest = t.strip_prefix(key)?.trim_start().strip_prefix(':')?;
                    let rest = rest.trim();
                    let block = rest.is_empty() || rest.starts_with('|') || rest.starts_with('>');
                    Some(i + 1 + usize::from(block))
                })
                .nth(n)
        });
        match start {
            Some(first) => problem.offset_lines(first - 1),
            None => problem,
        }
    };
    match e {
        ConfigError::NoPemCertificates { path, problem } => ConfigError::NoPemCertificates {
            problem: place(&path, problem),
            path,
        },
        ConfigError::PemBlock {
            path,
            block,
            blocks,
            problem,
        } => ConfigError::PemBlock {
            problem: place(&path, problem),
            path,
            block,
            blocks,
        },
        other => other,
    }
}

fn build(raw: RawDocument, now: SystemTime) -> Result<Document, ConfigError> {
    if raw.section != SECTION {
        return Err(ConfigError::Header {
            field: "section",
            expected: SECTION,
            found: raw.section,
        });
    }
    if raw.schema != SCHEMA {
        return Err(ConfigError::Header {
            field: "schema",
            expected: SCHEMA,
            found: raw.schema,
        });
    }
    if raw.spec.policies.is_empty() {
        return Err(invalid(
            "spec.policies".to_owned(),
            "at least one policy is required; without one every agent is rejected",
        ));
    }
    let mut warnings = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    let mut policies = Vec::with_capacity(raw.spec.policies.len());
    for (i, rp) in raw.spec.policies.into_iter().enumerate() {
        let at = format!("spec.policies[{i}]");
        if rp.name.trim().is_empty() {
            return Err(invalid(format!("{at}.name"), "must not be empty"));
        }
        if !names.insert(rp.name.clone()) {
            return Err(invalid(
                format!("{at}.name"),
                "duplicate policy name; give every policy its own name",
            ));
        }
        if rp.required_attestors.is_empty() {
            return Err(invalid(
                format!("{at}.requiredAttestors"),
                "at least one attestor is required; an empty list would authorize any agent",
            ));
        }
        let mut attestors: Vec<Attestor> = Vec::with_capacity(rp.required_attestors.len());
        for (j, ra) in rp.required_attestors.into_iter().enumerate() {
            let at = format!("{at}.requiredAttestors[{j}]");
            if attestors.iter().any(|a| a.method() == ra.kind.0) {
                return Err(invalid(
                    format!("{at}.type"),
                    "attestor type listed twice in one policy; list it once",
                ));
            }
            let config = ra.config.unwrap_or_default();
            match ra.kind.0 {
                Method::TpmEk => {
                    let c = build_tpm_ek(config, &format!("{at}.config"), now, &mut warnings)?;
                    attestors.push(Attestor::TpmEk(c));
                }
            }
        }
        let (spiffe_id, spiffe_id_is_default) = match rp.spiffe_id_template {
            None => (SpiffeIdTemplate::default(), true),
            Some(t) => {
                let parsed =
                    SpiffeIdTemplate::parse(&t).map_err(|source| ConfigError::Template {
                        path: format!("{at}.spiffeIdTemplate"),
                        source,
                    })?;
                (parsed, false)
            }
        };
        policies.push(Policy {
            name: rp.name,
            attestors,
            spiffe_id,
            spiffe_id_is_default,
        });
    }
    Ok(Document { policies, warnings })
}

fn build_tpm_ek(
    raw: RawTpmEkConfig,
    at: &str,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<TpmEkConfig, ConfigError> {
    let chain = ChainOptions {
        allow_sha1: raw.allow_sha1_signatures.unwrap_or(false),
        accept_expired_ek: raw.accept_expired_ek.unwrap_or(false),
        ..ChainOptions::default()
    };
    let hashes = raw.allowed_hashes.unwrap_or_default();
    if raw.ca_certs.is_none() && hashes.is_empty() {
        return Err(invalid(
            at.to_owned(),
            "at least one of caCerts or allowedHashes must be present",
        ));
    }
    let mut allowed_hashes = HashSet::with_capacity(hashes.len());
    let mut first_seen: HashMap<[u8; 32], usize> = HashMap::new();
    for (k, h) in hashes.iter().enumerate() {
        let path = format!("{at}.allowedHashes[{k}]");
        let digest = parse_hash(h).ok_or_else(|| ConfigError::Hash {
            path: path.clone(),
            found: shorten(h),
        })?;
        if let Some(first) = first_seen.get(&digest) {
            warnings.push(format!(
                "{path}: duplicates {at}.allowedHashes[{first}] (harmless; remove one)"
            ));
        } else {
            first_seen.insert(digest, k);
        }
        allowed_hashes.insert(digest);
    }
    let mut ca_der = Vec::new();
    let mut intermediate_der = Vec::new();
    if let Some(text) = &raw.ca_certs {
        ca_der = pem_certs::certificates(text, &format!("{at}.caCerts"), chain, now, warnings)?;
    }
    if let Some(text) = &raw.intermediate_certs {
        let path = format!("{at}.intermediateCerts");
        intermediate_der = pem_certs::certificates(text, &path, chain, now, warnings)?;
        if raw.ca_certs.is_none() {
            warnings.push(format!(
                "{path}: ignored without caCerts (intermediates only help chain building)"
            ));
        }
    }
    let (ca_certs, intermediate_certs) = (ca_der.len(), intermediate_der.len());
    let trust = if raw.ca_certs.is_some() {
        let store = TrustStore::new(ca_der, intermediate_der, chain).map_err(|source| {
            ConfigError::TrustStore {
                path: at.to_owned(),
                source: Box::new(source),
            }
        })?;
        Some(store)
    } else {
        None
    };
    let profile = match raw.ek_profile_check {
        None | Some(RawProfileMode::Enforce) => ProfileMode::Enforce,
        Some(RawProfileMode::Warn) => ProfileMode::Warn,
    };
    Ok(TpmEkConfig {
        ek: EkPolicy {
            trust,
            allowed_hashes,
            profile,
            chain,
        },
        ca_certs,
        intermediate_certs,
    })
}

fn invalid(path: String, message: &'static str) -> ConfigError {
    ConfigError::Invalid { path, message }
}

/// Parses 64 hex digits (either case) into a digest.
fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out).ok()?;
    Some(out)
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_in_either_case() {
        let lower = "de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab";
        let a = parse_hash(lower).unwrap();
        assert_eq!(parse_hash(&lower.to_uppercase()), Some(a));
        assert_eq!(a[0], 0xde);
        assert_eq!(parse_hash(&lower[..63]), None);
        assert_eq!(parse_hash(&format!("{lower}00")), None);
        assert_eq!(parse_hash(&lower.replace('d', "g")), None);
    }

    #[test]
    fn a_tab_in_the_indentation_is_named_with_its_line() {
        let doc = "section: AgentAttestation\nschema: v1\nspec:\n\tpolicies: []\n";
        let e = Document::parse(doc.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            e,
            "line 4: a tab in the indentation; YAML indents with spaces only (replace the tab \
             with spaces)"
        );
    }

    #[test]
    fn pem_problems_name_the_documents_line_not_the_fields() {
        // Line 15 is the bad block's BEGIN, in policy p2 (p1 uses a flow-style config).
        let doc = "section: AgentAttestation
schema: v1
spec:
  policies:
  - name: p1
    requiredAttestors:
    - type: tpm_ek
      config: {allowedHashes: [\"1111111111111111111111111111111111111111111111111111111111111111\"]}
  - name: p2
    requiredAttestors:
    - type: tpm_ek
      config:
        caCerts: |
          some text a vendor bundle carries
          -----BEGIN CERTIFICATE-----
          bm90IGEgY2VydGlmaWNhdGU=
          -----END CERTIFICATE-----
";
        let e = Document::parse(doc.as_bytes()).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.policies[1].requiredAttestors[0].config.caCerts: could not parse"),
            "{e}"
        );
        assert!(
            e.contains("the certificate at line 15 cannot be parsed"),
            "{e}"
        );
        assert!(!e.contains("NomError"), "{e}");
    }

    #[test]
    fn shorten_cuts_long_values_on_char_boundaries() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(100);
        let s = shorten(&long);
        assert!(s.ends_with("...") && s.chars().count() == 83, "{s}");
    }
}
