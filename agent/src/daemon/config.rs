//! The agent's YAML configuration file (`ekattest-agent run --config FILE`).
//!
//! Keys are the seed's Linux installation keys verbatim (`cluster-id`,
//! `disable-kubernetes-attestation`, `agent-attestors`) plus ours in kebab-case; see
//! `deploy/agent.yaml` for every key with a comment. Unknown keys are an error (a typo must
//! not silently fall back to a default). The seed's three-key example parses on its own:
//! `broker` then defaults to `mqtt://localhost:1883` and `trust-bundle` to
//! `/etc/ekattest/bundle.pem`. Parsing is pure: nothing here opens a file other than the
//! one handed to [`Config::load`], and nothing panics on any input.
//!
//! `broker` is one URL or a list of URLs (the MQTT listeners of one clustered broker:
//! nodes of a NATS cluster, an EMQX or HiveMQ cluster): `broker: [mqtt://a:1883,
//! mqtt://b:1883]`. The agent connects to the first; when a connection fails or is lost it
//! moves to the next, in turn, after its usual jittered backoff ([`Config::brokers`]). All
//! URLs of a list share one scheme and so one `tls:` block: a list mixing `mqtt://` and
//! `mqtts://` is an error, so that losing a TLS node never sends the agent to a plaintext
//! one. A list holds 1 to [`BROKERS_MAX`] distinct URLs.
//!
//! Secure defaults (issue 13): `mqtt://` to a host other than loopback (127.0.0.0/8, ::1,
//! `localhost`) is refused, for every URL of a list and for `--broker`, unless
//! `insecure-plaintext: true` (the MQTT client then warns, naming the host). [`Config::load`]
//! also refuses a `password-file` or `tls.key` that group or others may read
//! ([`check_private_file`], which gives the `chmod 600` to run); the MQTT client checks
//! again when it reads them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ekattest_protocol::broker_url::{self, UrlError};
use ekattest_protocol::hardening::{is_loopback_host, private_mode_ok};
use ekattest_protocol::topic::{self, Part};
use serde::Deserialize;

use crate::spec::TpmSpec;
use crate::tpm::ek::EkKind;

/// Largest configuration file read.
pub const CONFIG_MAX: u64 = 64 * 1024;

/// Most URLs in a `broker` list.
pub const BROKERS_MAX: usize = 16;

/// A configuration that cannot be used; the message names the key and what to write.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML, or a key that does not exist, or a value of the wrong type.
    #[error("config: {0}")]
    Yaml(String),
    /// A password or private key file is readable or writable by group or others.
    #[error(
        "config key {key}: {path} is accessible by group or others (mode {mode:04o}); run \
         `chmod 600 {path}`"
    )]
    Permissions {
        /// The key naming the file (`password-file`, `tls.key`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key whose value is not acceptable.
    #[error("config key {key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong and what to write instead.
        reason: String,
    },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// One broker address from `broker: mqtt[s]://HOST[:PORT]` (or one URL of a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// `mqtts://`: TLS.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (default 1883, or 8883 for mqtts).
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for another scheme, a missing host, a path or a bad port.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let bad = |reason: &str| {
            invalid(
                "broker",
                format!("{url:?}: {reason} (expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT])"),
            )
        };
        let parsed = broker_url::parse(url, &broker_url::MQTT_SCHEMES).map_err(|e| {
            bad(match e {
                UrlError::UnknownScheme => "unknown scheme",
                UrlError::NotHostPort => "a path, user or query is not supported",
                UrlError::UnclosedBracket => "unclosed '['",
                UrlError::AfterBracket { .. } => "unexpected text after ']'",
                UrlError::EmptyHost => "missing host",
                UrlError::BadPort { .. } => "port is not a number 1-65535",
            })
        })?;
        Ok(Self {
            tls: parsed.scheme.tls,
            host: parsed.host.to_owned(),
            port: parsed.port,
        })
    }

    /// The URL again (`mqtt://HOST:PORT`, IPv6 hosts in brackets), for logs.
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// Parses a `broker` list (the first URL, then the others), checking it as the config
    /// key is checked: 1 to [`BROKERS_MAX`] URLs, one scheme, no URL twice.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for `broker`, naming the URL at fault.
    pub fn parse_list<S: AsRef<str>>(urls: &[S]) -> Result<(Self, Vec<Self>), ConfigError> {
        if urls.is_empty() {
            return Err(invalid(
                "broker",
                "an empty list: give one URL (broker: mqtt://HOST:PORT) or several \
                 (broker: [mqtt://a:1883, mqtt://b:1883])",
            ));
        }
        if urls.len() > BROKERS_MAX {
            return Err(invalid(
                "broker",
                format!("more than {BROKERS_MAX} URLs: list at most {BROKERS_MAX}"),
            ));
        }
        let mut all: Vec<Self> = Vec::with_capacity(urls.len());
        for url in urls {
            let b = Self::parse(url.as_ref())?;
            if all.contains(&b) {
                return Err(invalid(
                    "broker",
                    format!("{:?} is listed twice", url.as_ref()),
                ));
            }
            if let Some(first) = all.first()
                && first.tls != b.tls
            {
                return Err(invalid(
                    "broker",
                    format!(
                        "{:?} mixes mqtt:// and mqtts:// in one list: use one scheme for \
                         every URL (they share the tls: settings, and a failover must never \
                         drop TLS)",
                        url.as_ref()
                    ),
                ));
            }
            all.push(b);
        }
        let first = all.remove(0);
        Ok((first, all))
    }
}

/// `broker:` as written: one URL or a list of URLs.
#[derive(Debug)]
struct RawBrokers(Vec<String>);

impl<'de> Deserialize<'de> for RawBrokers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawBrokers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a broker URL or a list of broker URLs")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawBrokers, E> {
                Ok(RawBrokers(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawBrokers, A::Error> {
                // Bounded: one more URL than allowed is enough to refuse the list; the
                // rest is read and dropped.
                let mut urls = Vec::new();
                while urls.len() <= BROKERS_MAX {
                    match seq.next_element::<String>()? {
                        Some(url) => urls.push(url),
                        None => return Ok(RawBrokers(urls)),
                    }
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(RawBrokers(urls))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `tls:` files for an `mqtts://` broker.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Tls {
    /// PEM CA certificate(s) the broker's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain), for brokers that require client certificates.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// `retry:` bounds of the jittered exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// First bound (default 1 s).
    pub initial: Duration,
    /// Cap (default 5 min).
    pub max: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `cluster-id`.
    pub cluster_id: String,
    /// `broker`: the first (or only) URL.
    pub broker: Broker,
    /// `broker` as a list: the URLs after the first, tried in turn after a connection
    /// failure (empty for one URL). Same scheme as `broker`.
    pub fallback_brokers: Vec<Broker>,
    /// `tls` (required with mqtts://, `ca` at least).
    pub tls: Option<Tls>,
    /// `username`.
    pub username: Option<String>,
    /// `password-file`.
    pub password_file: Option<PathBuf>,
    /// `tpm` (default /dev/tpmrm0).
    pub tpm: TpmSpec,
    /// `ek`: which EK to attest with (default: the first found, RSA-2048 first).
    pub ek: Option<EkKind>,
    /// `trust-bundle`: the server's SVID CA certificate(s), PEM.
    pub trust_bundle: PathBuf,
    /// `data-dir`: where svid.pem, svid.key and bundle.pem are written.
    pub data_dir: PathBuf,
    /// `agent-id` (default: `ek-` + 32 hex digits of the EK's public_hash).
    pub agent_id: Option<String>,
    /// `topic-prefix`.
    pub topic_prefix: String,
    /// `log-level`.
    pub log_level: log::LevelFilter,
    /// `log-format`: `text` (default) or `json`.
    pub log_format: LogFormat,
    /// `metrics-textfile`.
    pub metrics_textfile: Option<PathBuf>,
    /// `retry`.
    pub retry: Retry,
    /// `response-timeout`: how long to wait for a Challenge or Result.
    pub response_timeout: Duration,
    /// `renew-before`: re-attest when this fraction of the SVID lifetime remains.
    pub renew_before: f64,
    /// `insecure-plaintext`: allow `mqtt://` to a non-loopback host (default false).
    pub insecure_plaintext: bool,
    /// `parameter-encryption`: authorize the AK in ActivateCredential through a session
    /// salted to the EK with response encryption, so the secret never crosses the TPM bus
    /// in clear (default true; false for TPMs that misbehave with salted sessions).
    pub parameter_encryption: bool,
    /// `svid-key`: where the SVID key lives (default [`SvidKeyKind::Software`]).
    pub svid_key: SvidKeyKind,
}

/// `log-format`: how log lines look on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `text`: `level: message, key: value` (journald adds the time).
    #[default]
    Text,
    /// `json`: one JSON object per line with `time` (RFC 3339 UTC), `level`, `msg` and
    /// camelCase fields, as the server writes them.
    Json,
}

/// `svid-key` (and `--svid-key`): where the agent makes the key its X.509-SVID certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SvidKeyKind {
    /// `software`: a P-256 key generated in memory; `svid.key` is PKCS#8 PEM. Any process
    /// that reads `svid.key` holds the identity until the SVID expires.
    #[default]
    Software,
    /// `tpm`: a P-256 key created in the TPM (fixedTPM, fixedParent, sensitiveDataOrigin)
    /// and certified by the AK; `svid.key` is a `TSS2 PRIVATE KEY` that only this TPM can
    /// load (workloads sign through OpenSSL's tpm2 provider).
    Tpm,
}

impl SvidKeyKind {
    /// Parses `software` or `tpm`.
    ///
    /// # Errors
    /// A message naming the accepted values.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "software" => Ok(Self::Software),
            "tpm" => Ok(Self::Tpm),
            other => Err(format!(
                "svid-key {other:?} is not one of: software (default), tpm"
            )),
        }
    }

    /// The config spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Software => "software",
            Self::Tpm => "tpm",
        }
    }
}

/// Refuses a password or private key file that group or others may access. A file that
/// cannot be examined is left to the code that reads it (which names the I/O error).
///
/// # Errors
/// [`ConfigError::Permissions`] with the `chmod 600` to run.
pub fn check_private_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode();
            if !private_mode_ok(mode) {
                return Err(ConfigError::Permissions {
                    key,
                    path: path.to_owned(),
                    mode: mode & 0o7777,
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (key, path, private_mode_ok);
    Ok(())
}

/// Refuses plaintext MQTT to a non-loopback host unless `insecure` (`insecure-plaintext`).
fn check_plaintext<'a>(
    brokers: impl IntoIterator<Item = &'a Broker>,
    insecure: bool,
) -> Result<(), ConfigError> {
    if insecure {
        return Ok(());
    }
    match brokers
        .into_iter()
        .find(|b| !b.tls && !is_loopback_host(&b.host))
    {
        Some(b) => Err(invalid(
            "broker",
            format!(
                "{}: plaintext MQTT to {:?}, which is not a loopback host: the password and \
                 every attestation message would cross the network unencrypted; use mqtts:// \
                 with tls: {{ca: FILE}}, or set insecure-plaintext: true to accept that",
                b.url(),
                b.host
            ),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Attestor {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial: Option<String>,
    max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    cluster_id: Option<String>,
    disable_kubernetes_attestation: Option<bool>,
    agent_attestors: Option<Vec<Attestor>>,
    broker: Option<RawBrokers>,
    tls: Option<Tls>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    tpm: Option<String>,
    ek: Option<String>,
    trust_bundle: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    agent_id: Option<String>,
    topic_prefix: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    metrics_textfile: Option<PathBuf>,
    retry: Option<RawRetry>,
    response_timeout: Option<String>,
    renew_before: Option<f64>,
    insecure_plaintext: Option<bool>,
    parameter_encryption: Option<bool>,
    svid_key: Option<String>,
}

/// Parses `30s`, `5m`, `1h`, `1h30m`, `500ms` ([`ekattest_protocol::duration::parse`],
/// shared with the server); zero is refused.
///
/// # Errors
/// [`ConfigError::Invalid`] for `key` with the accepted forms.
pub fn parse_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = ekattest_protocol::duration::parse(text)
        .map_err(|e| invalid(key, format!("{text:?} {e}")))?;
    if d.is_zero() {
        return Err(invalid(key, "must be more than zero"));
    }
    Ok(d)
}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > CONFIG_MAX {
            return Err(read(std::io::Error::other("larger than 64 KiB")));
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let config = Self::parse(&text)?;
        if let Some(pw) = &config.password_file {
            check_private_file("password-file", pw)?;
        }
        if let Some(key) = config.tls.as_ref().and_then(|t| t.key.as_ref()) {
            check_private_file("tls.key", key)?;
        }
        Ok(config)
    }

    /// Parses and validates YAML text.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: Raw = serde_norway::from_str(text).map_err(|e| {
            ConfigError::Yaml(
                ekattest_protocol::yaml::tab_in_indentation(text)
                    .map_or_else(|| e.to_string(), |tab| tab.to_string()),
            )
        })?;
        let cluster_id = raw
            .cluster_id
            .ok_or_else(|| invalid("cluster-id", "missing (write e.g. cluster-id: c-xxxxxx)"))?;
        topic::validate(Part::Cluster, &cluster_id)
            .map_err(|e| invalid("cluster-id", e.to_string()))?;
        // No Kubernetes attestor exists in this agent; the key is accepted either way.
        let _ = raw.disable_kubernetes_attestation;
        let attestors = raw.agent_attestors.ok_or_else(|| {
            invalid(
                "agent-attestors",
                "missing (write agent-attestors: [{type: tpm_ek}])",
            )
        })?;
        if let Some(other) = attestors.iter().find(|a| a.kind != "tpm_ek") {
            return Err(invalid(
                "agent-attestors",
                format!(
                    "attestor type {:?} is not supported by this agent (supported: tpm_ek)",
                    other.kind
                ),
            ));
        }
        if attestors.is_empty() {
            return Err(invalid("agent-attestors", "must contain {type: tpm_ek}"));
        }
        let urls = raw
            .broker
            .map_or_else(|| vec!["mqtt://localhost:1883".to_owned()], |b| b.0);
        let (broker, fallback_brokers) = Broker::parse_list(&urls)?;
        let insecure_plaintext = raw.insecure_plaintext.unwrap_or(false);
        let svid_key = raw
            .svid_key
            .as_deref()
            .map(SvidKeyKind::parse)
            .transpose()
            .map_err(|e| invalid("svid-key", e))?
            .unwrap_or_default();
        check_plaintext(
            std::iter::once(&broker).chain(&fallback_brokers),
            insecure_plaintext,
        )?;
        if broker.tls && raw.tls.as_ref().and_then(|t| t.ca.as_ref()).is_none() {
            return Err(invalid(
                "tls",
                "an mqtts:// broker needs tls: {ca: FILE} (the broker's CA certificate, PEM)",
            ));
        }
        if let Some(tls) = &raw.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(invalid(
                "tls",
                "cert and key go together: give both or neither",
            ));
        }
        let tpm = TpmSpec::parse(raw.tpm.as_deref().unwrap_or(crate::tpm::chardev::TPMRM0))
            .map_err(|e| invalid("tpm", e.to_string()))?;
        let ek = raw
            .ek
            .map(|k| crate::ops::parse_ek(&k).map_err(|e| invalid("ek", e)))
            .transpose()?;
        if let Some(agent) = &raw.agent_id {
            topic::validate(Part::Agent, agent).map_err(|e| invalid("agent-id", e.to_string()))?;
        }
        let topic_prefix = raw
            .topic_prefix
            .unwrap_or_else(|| topic::DEFAULT_PREFIX.to_owned());
        topic::validate(Part::Prefix, &topic_prefix)
            .map_err(|e| invalid("topic-prefix", e.to_string()))?;
        let log_level = match raw.log_level.as_deref().unwrap_or("info") {
            "off" => log::LevelFilter::Off,
            "error" => log::LevelFilter::Error,
            "warn" => log::LevelFilter::Warn,
            "info" => log::LevelFilter::Info,
            "debug" => log::LevelFilter::Debug,
            "trace" => log::LevelFilter::Trace,
            other => {
                return Err(invalid(
                    "log-level",
                    format!("{other:?} (expected off, error, warn, info, debug or trace)"),
                ));
            }
        };
        let log_format = match raw.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log-format",
                    format!("{other:?} (expected text or json)"),
                ));
            }
        };
        let retry = raw.retry.unwrap_or(RawRetry {
            initial: None,
            max: None,
        });
        let retry = Retry {
            initial: retry.initial.map_or(Ok(Duration::from_secs(1)), |t| {
                parse_duration("retry.initial", &t)
            })?,
            max: retry.max.map_or(Ok(Duration::from_secs(300)), |t| {
                parse_duration("retry.max", &t)
            })?,
        };
        if retry.initial > retry.max {
            return Err(invalid("retry", "initial is larger than max"));
        }
        let response_timeout = raw
            .response_timeout
            .map_or(Ok(Duration::from_secs(30)), |t| {
                parse_duration("response-timeout", &t)
            })?;
        let renew_before = raw.renew_before.unwrap_or(0.33);
        if !(renew_before > 0.0 && renew_before < 1.0) {
            return Err(invalid(
                "renew-before",
                format!("{renew_before} is not a fraction between 0 and 1 (e.g. 0.33)"),
            ));
        }
        Ok(Self {
            cluster_id,
            broker,
            fallback_brokers,
            tls: raw.tls,
            username: raw.username,
            password_file: raw.password_file,
            tpm,
            ek,
            trust_bundle: raw
                .trust_bundle
                .unwrap_or_else(|| PathBuf::from("/etc/ekattest/bundle.pem")),
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/ekattest")),
            agent_id: raw.agent_id,
            topic_prefix,
            log_level,
            log_format,
            metrics_textfile: raw.metrics_textfile,
            retry,
            response_timeout,
            renew_before,
            insecure_plaintext,
            parameter_encryption: raw.parameter_encryption.unwrap_or(true),
            svid_key,
        })
    }
}

impl Config {
    /// Every broker in failover order: `broker`, then `fallback_brokers`.
    pub fn brokers(&self) -> impl Iterator<Item = &Broker> {
        std::iter::once(&self.broker).chain(&self.fallback_brokers)
    }

    /// Replaces the brokers with a comma-separated list (`--broker URL[,URL...]` on the
    /// command line), checked as the config key is, including the `tls:` requirement of
    /// `mqtts://` and the `insecure-plaintext` rule.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the URL or the missing `tls:` block.
    pub fn set_brokers(&mut self, urls: &str) -> Result<(), ConfigError> {
        let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
        let (broker, fallback) = Broker::parse_list(&urls)?;
        check_plaintext(
            std::iter::once(&broker).chain(&fallback),
            self.insecure_plaintext,
        )?;
        if broker.tls && self.tls.as_ref().and_then(|t| t.ca.as_ref()).is_none() {
            return Err(invalid(
                "tls",
                "an mqtts:// broker needs tls: {ca: FILE} (the broker's CA certificate, PEM)",
            ));
        }
        self.broker = broker;
        self.fallback_brokers = fallback;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
