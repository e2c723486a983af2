//! The server daemon's own configuration file (`ekattest-server --config FILE`): where the
//! broker is, who this node is, which CA signs SVIDs, which policy files to watch.
//!
//! YAML with kebab-case keys; unknown keys are errors naming the key, and every error names
//! the file and the key. Relative paths are resolved against the folder of the config file.
//! The policy documents themselves (`AgentAttestation`) are not parsed here: see
//! [`crate::config`]. This module reads the password file and the `policy-signers` public
//! keys, but never logs or prints the password ([`Password`]'s `Debug` is redacted). A
//! commented example is `deploy/server.yaml`.
//!
//! Secure defaults (issue 13): a plaintext bus (`mqtt://`, or `nats://` with `bus: nats`) to a
//! host other than loopback is refused unless `insecure-plaintext: true`; the password file,
//! `ca-key` and `tls.key` must not be readable by group or others (the error gives the
//! `chmod 600` to run); `policy-topic: true` needs `policy-signers`.

use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ekattest_protocol::broker_url::{self, BrokerUrl, UrlError};
use ekattest_protocol::hardening::{is_loopback_host, private_mode_ok_for};
use ekattest_protocol::topic::{self, Part};
use serde::Deserialize;

use super::ratelimit::LoginLimit;
use crate::config::signed::Signers;
use crate::registry::{self, Backend, RegistryConfig};
use crate::session::SessionConfig;

/// Largest server config file read, in bytes.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;
/// Default `svid-ttl`.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default `reload-interval`.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Default `metrics-address`.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9464";

/// Why the config file cannot be used. Each message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ServerConfigError {
    /// The config file (or a file it names) cannot be read.
    #[error("{file}: cannot read {what} {path}: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// What the file is (`config file`, `password-file`).
        what: &'static str,
        /// The file that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not YAML of the expected shape (unknown key, missing required key, wrong type).
    #[error("{file}: {source}")]
    Yaml {
        /// The config file.
        file: PathBuf,
        /// serde_yaml's message (names the key and line).
        #[source]
        source: serde_norway::Error,
    },
    /// A tab in the indentation (YAML allows spaces only).
    #[error("{file}: {tab}")]
    Tab {
        /// The config file.
        file: PathBuf,
        /// Where.
        tab: ekattest_protocol::yaml::TabIndent,
    },
    /// A password or private key file is readable or writable by group or others.
    #[error(
        "{file}: {key}: {path} is accessible by group or others (mode {mode:04o}); run \
         `chmod 600 {path}` (group read is accepted only on a file owned by root)"
    )]
    Permissions {
        /// The config file.
        file: PathBuf,
        /// The key naming the file (`password-file`, `ca-key`, `tls.key`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key's value is not acceptable.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// The key (`broker`, `tls.ca`, `session-ttl`...).
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A password read from `password-file`. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Reads a password file: its first line (at most [`MAX_CONFIG_BYTES`] are read).
    ///
    /// # Errors
    /// The I/O error; `InvalidData` if the first line is empty or the file is not UTF-8.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_CONFIG_BYTES)
            .read_to_end(&mut bytes)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the first line (the password) is empty",
            ));
        }
        Ok(Self(line.to_owned()))
    }

    /// The password, for the one call that sends it (the MQTT CONNECT packet, a database
    /// login).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The broker address parsed from `broker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// The URL as written (for logs; it carries no credentials).
    pub url: String,
    /// `mqtts://`: TLS.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default 1883, or 8883 with TLS).
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
    ///
    /// # Errors
    /// A message saying what is wrong with the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        match broker_url::parse(url, &broker_url::MQTT_SCHEMES) {
            Ok(parsed) => Ok(Self::from_parsed(url, parsed)),
            Err(UrlError::UnknownScheme) => Err(format!(
                "{url:?} is not a broker URL; write mqtt://HOST:PORT or mqtts://HOST:PORT"
            )),
            Err(e) => Err(url_error(url, e)),
        }
    }

    fn from_parsed(url: &str, parsed: BrokerUrl<'_>) -> Self {
        Self {
            url: url.to_owned(),
            tls: parsed.scheme.tls,
            host: parsed.host.to_owned(),
            port: parsed.port,
        }
    }
}

/// The message for a broker or NATS URL that has a known scheme but is otherwise wrong.
fn url_error(url: &str, e: UrlError<'_>) -> String {
    match e {
        UrlError::UnknownScheme | UrlError::NotHostPort => format!(
            "{url:?}: only mqtt[s]://HOST[:PORT] is supported (no path, user or query; \
             use username and password-file for credentials)"
        ),
        UrlError::UnclosedBracket => format!("{url:?}: unclosed '[' in an IPv6 address"),
        UrlError::AfterBracket { after } => {
            format!("{url:?}: unexpected {after:?} after the address")
        }
        UrlError::EmptyHost => format!("{url:?}: the host is empty"),
        UrlError::BadPort { port } => {
            format!("{url:?}: port {port:?} is not a number in 1..65535")
        }
    }
}

/// Which message bus the server uses (`bus:`). Agents always speak MQTT; with NATS they
/// connect to the MQTT listeners of the nats-server cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// `bus: mqtt` (default): one MQTT broker (`broker`), logins through `$share`.
    Mqtt,
    /// `bus: nats`: a NATS cluster (`nats-url`), logins through the queue group `ekattest`.
    Nats {
        /// `nats-url`: `nats://HOST:PORT` or `tls://HOST:PORT`, one or more (the client
        /// fails over between them).
        urls: Vec<String>,
    },
}

/// `nats-url`: one URL or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUrls {
    One(String),
    Many(Vec<String>),
}

/// Parses a `nats-url` entry: `nats://HOST[:PORT]` or `tls://HOST[:PORT]` (default port
/// 4222). Returns the address as a [`Broker`] (`tls` for `tls://`).
///
/// # Errors
/// A message saying what is wrong with the URL.
pub fn parse_nats_url(url: &str) -> Result<Broker, String> {
    match broker_url::parse(url, &broker_url::NATS_SCHEMES) {
        Ok(parsed) => Ok(Broker::from_parsed(url, parsed)),
        Err(UrlError::UnknownScheme) => Err(format!(
            "{url:?} is not a NATS URL; write nats://HOST:PORT or tls://HOST:PORT"
        )),
        Err(e) => Err(url_error(url, e)),
    }
}

/// TLS files for the broker connection (`tls:`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// `tls.ca`: PEM bundle of the CA(s) that sign the broker's certificate.
    pub ca: Option<PathBuf>,
    /// `tls.cert`: PEM client certificate chain (optional, with `tls.key`).
    pub cert: Option<PathBuf>,
    /// `tls.key`: PEM private key of `tls.cert`.
    pub key: Option<PathBuf>,
}

/// The validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file it was read from.
    pub file: PathBuf,
    /// `bus`: MQTT (default) or NATS.
    pub bus: Bus,
    /// `broker` with `bus: mqtt` (`mqtt://host:port` or `mqtts://host:port`, required);
    /// with `bus: nats`, the first `nats-url` (its `url` lists them all, for logs).
    pub broker: Broker,
    /// `tls`: `{ca, cert, key}`; `ca` is required with `mqtts://`.
    pub tls: TlsFiles,
    /// `username`: MQTT user name (optional).
    pub username: Option<String>,
    /// The contents of `password-file` (first line), if set; requires `username`.
    pub password: Option<Password>,
    /// `cluster-id` (required): one topic level (`A-Z a-z 0-9 - _ .`).
    pub cluster_id: String,
    /// `node-id`: unique per server process; default `<hostname>-<pid>`.
    pub node_id: String,
    /// `topic-prefix`: default `ekattest/v1`.
    pub topic_prefix: String,
    /// `trust-domain` (required): the SPIFFE trust domain, e.g. `example.org`.
    pub trust_domain: String,
    /// `ca-cert` (required): PEM certificate of the SVID-signing CA.
    pub ca_cert: PathBuf,
    /// `ca-key` (required): PEM private key of `ca-cert`.
    pub ca_key: PathBuf,
    /// `svid-ttl`: validity of issued X.509-SVIDs; default 1h.
    pub svid_ttl: Duration,
    /// `session-ttl` and `max-sessions`: challenge sessions (default 5m and the session
    /// store's default).
    pub sessions: SessionConfig,
    /// `metrics-address`: where `/metrics` is served; default 127.0.0.1:9464; `""` disables.
    pub metrics_address: Option<SocketAddr>,
    /// `policy-files`: AgentAttestation documents, merged into one (policies concatenated).
    pub policy_files: Vec<PathBuf>,
    /// `reload-interval`: how often policy files are checked for changes; default 2s.
    pub reload_interval: Duration,
    /// `log-level`: `error`, `warn`, `info` (default), `debug`, `trace`.
    pub log_level: log::LevelFilter,
    /// `workers`: attestation worker threads; default the available parallelism.
    pub workers: usize,
    /// `login-burst` and `login-interval`: the per-agent login rate limit (default 3 logins
    /// at once, then one per 10s; `login-burst: 0` disables it).
    pub login_limit: LoginLimit,
    /// `insecure-plaintext`: allow `mqtt://` (or `nats://`) to a non-loopback host (default
    /// false; the daemon warns at start when it is used).
    pub insecure_plaintext: bool,
    /// `policy-topic`: take signed policy documents from `{p}/{cluster}/config` (default
    /// false: the server does not subscribe to it at all).
    pub policy_topic: bool,
    /// `policy-signers`: the public keys a config-topic document must be signed by
    /// (required with `policy-topic: true`).
    pub policy_signers: Signers,
    /// `agent-id-from-ek`: require the agent id to be the one derived from the EK (`ek-` +
    /// hash prefix); default true.
    pub agent_id_from_ek: bool,
    /// `require-tpm-svid-key`: refuse Logins whose SVID key is not a TPM-resident key
    /// certified by the AK (agents with `svid-key: tpm`); default false.
    pub require_tpm_svid_key: bool,
    /// `state-dir`: where the server keeps state (the SQLite registry); default
    /// `$STATE_DIRECTORY` (systemd's `StateDirectory=`) or `/var/lib/ekattest-server`.
    pub state_dir: PathBuf,
    /// `registry`: the device registry, bans and audit trail (default: SQLite at
    /// `state-dir/registry.db`).
    pub registry: RegistryConfig,
}

impl ServerConfig {
    /// The bus hosts reached in plaintext that are not loopback (allowed only with
    /// `insecure-plaintext: true`; the daemon warns about each at start).
    pub fn plaintext_hosts(&self) -> Vec<String> {
        plaintext_hosts(&self.bus, &self.broker)
    }
}

fn plaintext_hosts(bus: &Bus, broker: &Broker) -> Vec<String> {
    let hosts = match bus {
        Bus::Mqtt => vec![broker.clone()],
        Bus::Nats { urls } => urls.iter().filter_map(|u| parse_nats_url(u).ok()).collect(),
    };
    hosts
        .into_iter()
        .filter(|b| !b.tls && !is_loopback_host(&b.host))
        .map(|b| b.host)
        .collect()
}

/// Refuses a password or private key file that group or others may access. A file that
/// cannot be examined is left to the code that reads it (which names the I/O error).
///
/// # Errors
/// [`ServerConfigError::Permissions`] with the `chmod 600` to run.
pub fn check_private_file(
    config: &Path,
    key: &'static str,
    path: &Path,
) -> Result<(), ServerConfigError> {
    match private_file_mode(path) {
        Some((mode, uid)) if !private_mode_ok_for(mode, uid == 0) => {
            Err(ServerConfigError::Permissions {
                file: config.to_owned(),
                key,
                path: path.to_owned(),
                mode: mode & 0o7777,
            })
        }
        _ => Ok(()),
    }
}

/// The permission bits and the owner's uid of `path` (following symlinks, as Kubernetes
/// Secret volumes need), if it can be examined.
pub fn private_file_mode(path: &Path) -> Option<(u32, u32)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(path).ok().map(|m| (m.mode(), m.uid()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The file's shape, as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawConfig {
    /// See [`ServerConfig::broker`] (required with `bus: mqtt`).
    #[serde(default)]
    broker: Option<String>,
    #[serde(default)]
    bus: Option<String>,
    #[serde(default)]
    nats_url: Option<RawUrls>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    cluster_id: String,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    topic_prefix: Option<String>,
    trust_domain: String,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    #[serde(default)]
    svid_ttl: Option<String>,
    #[serde(default)]
    session_ttl: Option<String>,
    #[serde(default)]
    max_sessions: Option<usize>,
    #[serde(default)]
    metrics_address: Option<String>,
    #[serde(default)]
    policy_files: Vec<PathBuf>,
    #[serde(default)]
    reload_interval: Option<String>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    login_burst: Option<u32>,
    #[serde(default)]
    login_interval: Option<String>,
    #[serde(default)]
    insecure_plaintext: bool,
    #[serde(default)]
    policy_topic: bool,
    #[serde(default)]
    policy_signers: Vec<PathBuf>,
    #[serde(default = "yes")]
    agent_id_from_ek: bool,
    #[serde(default)]
    require_tpm_svid_key: bool,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    registry: Option<RawRegistry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    password_file: Option<PathBuf>,
    #[serde(default)]
    flush_interval: Option<String>,
    #[serde(default)]
    batch_max: Option<usize>,
    #[serde(default)]
    queue_max: Option<usize>,
    #[serde(default)]
    ban_refresh: Option<String>,
    #[serde(default)]
    audit_retention: Option<String>,
    #[serde(default)]
    duplicate_window: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca: Option<PathBuf>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
}

impl ServerConfig {
    /// Reads and validates the config file (and the password file it names).
    ///
    /// # Errors
    /// [`ServerConfigError`] naming the file and the key.
    pub fn load(file: &Path) -> Result<Self, ServerConfigError> {
        let text = read_limited(file, file, "config file")?;
        Self::parse(file, &text)
    }

    /// Validates config `text` as if read from `file` (relative paths resolve against its
    /// folder; the password file is read).
    ///
    /// # Errors
    /// [`ServerConfigError`] naming the file and the key.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ServerConfigError> {
        let raw: RawConfig = serde_norway::from_str(text).map_err(|source| {
            match ekattest_protocol::yaml::tab_in_indentation(text) {
                Some(tab) => ServerConfigError::Tab {
                    file: file.to_owned(),
                    tab,
                },
                None => ServerConfigError::Yaml {
                    file: file.to_owned(),
                    source,
                },
            }
        })?;
        build(file, raw)
    }
}

fn read_limited(
    config: &Path,
    path: &Path,
    what: &'static str,
) -> Result<String, ServerConfigError> {
    let err = |source| ServerConfigError::Read {
        file: config.to_owned(),
        what,
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_BYTES} bytes"),
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not UTF-8",
        ))
    })
}

fn build(file: &Path, raw: RawConfig) -> Result<ServerConfig, ServerConfigError> {
    let invalid = |key: &'static str, message: String| ServerConfigError::Invalid {
        file: file.to_owned(),
        key,
        message,
    };
    let base = file.parent().unwrap_or_else(|| Path::new(""));
    let resolve = |p: PathBuf| if p.is_relative() { base.join(p) } else { p };

    let (bus, broker) = bus_and_broker(&raw, &invalid)?;
    if !raw.insecure_plaintext
        && let Some(host) = plaintext_hosts(&bus, &broker).first()
    {
        let (key, fix) = match bus {
            Bus::Mqtt => ("broker", "use mqtts:// with tls.ca"),
            Bus::Nats { .. } => ("nats-url", "use tls:// with tls.ca"),
        };
        return Err(invalid(
            key,
            format!(
                "plaintext connection to {host:?}, which is not a loopback host: credentials, \
                 Logins and policy documents would cross the network unencrypted; {fix}, or \
                 set insecure-plaintext: true to accept that"
            ),
        ));
    }
    let tls = match raw.tls {
        None => TlsFiles::default(),
        Some(t) => TlsFiles {
            ca: t.ca.map(resolve),
            cert: t.cert.map(resolve),
            key: t.key.map(resolve),
        },
    };
    let tls_set = tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some();
    let mqtt = bus == Bus::Mqtt;
    if mqtt && !broker.tls && tls_set {
        return Err(invalid(
            "tls",
            "set, but broker is an mqtt:// URL; use mqtts:// for TLS or remove tls".to_owned(),
        ));
    }
    if broker.tls && tls.ca.is_none() {
        return Err(invalid(
            "tls.ca",
            if mqtt {
                "required with an mqtts:// broker: the PEM bundle that signs the broker's \
                 certificate"
            } else {
                "required with a tls:// nats-url: the PEM bundle that signs the NATS servers' \
                 certificates"
            }
            .to_owned(),
        ));
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err(invalid(
            "tls.key",
            "tls.cert and tls.key go together: set both or neither".to_owned(),
        ));
    }
    if let Some(key) = &tls.key {
        check_private_file(file, "tls.key", key)?;
    }
    let ca_key = resolve(raw.ca_key);
    check_private_file(file, "ca-key", &ca_key)?;
    let policy_signers = signers(file, &raw.policy_signers, &resolve)?;
    if raw.policy_topic && policy_signers.is_empty() {
        return Err(invalid(
            "policy-signers",
            "policy-topic: true needs policy-signers: [PEM public key files] (make a key pair \
             with `ekattestctl config keygen`); or set policy-topic: false"
                .to_owned(),
        ));
    }
    let password = match raw.password_file.map(resolve) {
        None => None,
        Some(path) => {
            if raw.username.is_none() {
                return Err(invalid(
                    "password-file",
                    "set without username; set username too".to_owned(),
                ));
            }
            check_private_file(file, "password-file", &path)?;
            let password = Password::read(&path).map_err(|source| ServerConfigError::Read {
                file: file.to_owned(),
                what: "password-file",
                path: path.clone(),
                source,
            })?;
            Some(password)
        }
    };
    topic::validate(Part::Cluster, &raw.cluster_id)
        .map_err(|e| invalid("cluster-id", e.to_string()))?;
    let node_id = match raw.node_id {
        Some(n) => n,
        // A dot cannot cross nats-server 2.9's MQTT gateway: keep it out of the default.
        None if !mqtt => default_node_id().replace('.', "-"),
        None => default_node_id(),
    };
    topic::validate(Part::Node, &node_id).map_err(|e| invalid("node-id", e.to_string()))?;
    let topic_prefix = raw
        .topic_prefix
        .unwrap_or_else(|| topic::DEFAULT_PREFIX.to_owned());
    topic::validate(Part::Prefix, &topic_prefix)
        .map_err(|e| invalid("topic-prefix", e.to_string()))?;
    if !mqtt {
        for (key, value) in [
            ("cluster-id", raw.cluster_id.as_str()),
            ("node-id", node_id.as_str()),
            ("topic-prefix", topic_prefix.as_str()),
        ] {
            if value.contains('.') {
                return Err(invalid(
                    key,
                    format!(
                        "{value:?} holds '.', which nats-server 2.9 refuses in MQTT topics (2.10 \
                         maps it to \"//\"); with bus: nats use - or _ instead"
                    ),
                ));
            }
        }
    }
    if !valid_trust_domain(&raw.trust_domain) {
        return Err(invalid(
            "trust-domain",
            format!(
                "{:?} is not a trust domain name: use lowercase a-z 0-9 . - _ (e.g. example.org), \
                 without spiffe:// or a path",
                raw.trust_domain
            ),
        ));
    }
    let duration = |key: &'static str, value: Option<String>, default: Duration, min: Duration| {
        let d = match value {
            None => default,
            Some(v) => parse_duration(&v).map_err(|m| invalid(key, m))?,
        };
        if d < min {
            return Err(invalid(
                key,
                format!("{d:?} is too short; the minimum is {min:?}"),
            ));
        }
        Ok(d)
    };
    let svid_ttl = duration(
        "svid-ttl",
        raw.svid_ttl,
        DEFAULT_SVID_TTL,
        Duration::from_secs(60),
    )?;
    let defaults = SessionConfig::default();
    let ttl = duration(
        "session-ttl",
        raw.session_ttl,
        defaults.ttl,
        Duration::from_secs(1),
    )?;
    let max_sessions = raw.max_sessions.unwrap_or(defaults.max_sessions);
    if max_sessions == 0 {
        return Err(invalid("max-sessions", "must be at least 1".to_owned()));
    }
    let reload_interval = duration(
        "reload-interval",
        raw.reload_interval,
        DEFAULT_RELOAD_INTERVAL,
        Duration::from_millis(100),
    )?;
    let metrics_address = match raw.metrics_address.as_deref() {
        None => Some(DEFAULT_METRICS_ADDRESS),
        Some("") => None,
        Some(a) => Some(a),
    }
    .map(|a| {
        a.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "metrics-address",
                format!("{a:?} is not IP:PORT (e.g. 127.0.0.1:9464); \"\" disables metrics"),
            )
        })
    })
    .transpose()?;
    let log_level = match raw.log_level.as_deref() {
        None => log::LevelFilter::Info,
        Some(l) => l.parse::<log::LevelFilter>().map_err(|_| {
            invalid(
                "log-level",
                format!("{l:?} is not one of off, error, warn, info, debug, trace"),
            )
        })?,
    };
    let workers = match raw.workers {
        None => std::thread::available_parallelism().map_or(1, usize::from),
        Some(0) => return Err(invalid("workers", "must be at least 1".to_owned())),
        Some(n) if n > 1024 => {
            return Err(invalid("workers", format!("{n} is more than 1024")));
        }
        Some(n) => n,
    };
    let limit_defaults = LoginLimit::default();
    let login_burst = match raw.login_burst {
        None => limit_defaults.burst,
        Some(n) if n > 1000 => {
            return Err(invalid(
                "login-burst",
                format!("{n} is more than 1000 (0 disables the login rate limit)"),
            ));
        }
        Some(n) => n,
    };
    let login_interval = duration(
        "login-interval",
        raw.login_interval,
        limit_defaults.interval,
        Duration::from_millis(1),
    )?;
    let state_dir = raw
        .state_dir
        .map(&resolve)
        .unwrap_or_else(default_state_dir);
    let registry = registry_config(
        file,
        raw.registry.unwrap_or_default(),
        &state_dir,
        &resolve,
        &duration,
    )?;
    Ok(ServerConfig {
        file: file.to_owned(),
        bus,
        broker,
        tls,
        username: raw.username,
        password,
        cluster_id: raw.cluster_id,
        node_id,
        topic_prefix,
        trust_domain: raw.trust_domain,
        ca_cert: resolve(raw.ca_cert),
        ca_key,
        svid_ttl,
        sessions: SessionConfig { ttl, max_sessions },
        metrics_address,
        policy_files: raw.policy_files.into_iter().map(resolve).collect(),
        reload_interval,
        log_level,
        workers,
        login_limit: LoginLimit {
            burst: login_burst,
            interval: login_interval,
            table: limit_defaults.table,
        },
        insecure_plaintext: raw.insecure_plaintext,
        policy_topic: raw.policy_topic,
        policy_signers,
        agent_id_from_ek: raw.agent_id_from_ek,
        require_tpm_svid_key: raw.require_tpm_svid_key,
        state_dir,
        registry,
    })
}

/// The default `state-dir`: systemd's `$STATE_DIRECTORY` (its first entry), else
/// `/var/lib/ekattest-server`.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/ekattest-server"))
}

type DurationKey<'a> = dyn Fn(&'static str, Option<String>, Duration, Duration) -> Result<Duration, ServerConfigError>
    + 'a;

/// Reads the `registry` section.
fn registry_config(
    file: &Path,
    raw: RawRegistry,
    state_dir: &Path,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
    duration: &DurationKey<'_>,
) -> Result<RegistryConfig, ServerConfigError> {
    let invalid = |key: &'static str, message: String| ServerConfigError::Invalid {
        file: file.to_owned(),
        key,
        message,
    };
    let backend = match raw.backend.as_deref().unwrap_or("sqlite") {
        "none" => Backend::None,
        "sqlite" => {
            if raw.url.is_some() {
                return Err(invalid(
                    "registry.url",
                    "is for backend: postgres; with sqlite set registry.path".to_owned(),
                ));
            }
            Backend::Sqlite(
                raw.path
                    .map(resolve)
                    .unwrap_or_else(|| state_dir.join(registry::DEFAULT_FILE)),
            )
        }
        "postgres" => {
            let Some(url) = raw.url else {
                return Err(invalid(
                    "registry.url",
                    "backend: postgres needs url: postgres://USER@HOST[:PORT]/DATABASE".to_owned(),
                ));
            };
            check_postgres_url(&url).map_err(|m| invalid("registry.url", m))?;
            if raw.path.is_some() {
                return Err(invalid(
                    "registry.path",
                    "is for backend: sqlite; with postgres set registry.url".to_owned(),
                ));
            }
            let password = match raw.password_file.map(resolve) {
                None => None,
                Some(path) => {
                    check_private_file(file, "registry.password-file", &path)?;
                    let p = Password::read(&path).map_err(|source| ServerConfigError::Read {
                        file: file.to_owned(),
                        what: "registry.password-file",
                        path: path.clone(),
                        source,
                    })?;
                    Some(p.0)
                }
            };
            Backend::Postgres { url, password }
        }
        other => {
            return Err(invalid(
                "registry.backend",
                format!("{other:?} is not a registry backend: use sqlite, postgres or none"),
            ));
        }
    };
    let mut config = RegistryConfig::new(backend);
    config.flush_interval = duration(
        "registry.flush-interval",
        raw.flush_interval,
        registry::DEFAULT_FLUSH_INTERVAL,
        Duration::from_millis(10),
    )?;
    config.ban_refresh = duration(
        "registry.ban-refresh",
        raw.ban_refresh,
        registry::DEFAULT_BAN_REFRESH,
        Duration::from_millis(100),
    )?;
    config.audit_retention = duration(
        "registry.audit-retention",
        raw.audit_retention,
        registry::DEFAULT_AUDIT_RETENTION,
        Duration::from_secs(3600),
    )?;
    config.duplicate_window = duration(
        "registry.duplicate-window",
        raw.duplicate_window,
        registry::DEFAULT_DUPLICATE_WINDOW,
        Duration::ZERO,
    )?;
    for (key, value, default, slot) in [
        (
            "registry.batch-max",
            raw.batch_max,
            registry::DEFAULT_BATCH_MAX,
            &mut config.batch_max,
        ),
        (
            "registry.queue-max",
            raw.queue_max,
            registry::DEFAULT_QUEUE_MAX,
            &mut config.queue_max,
        ),
    ] {
        *slot = match value {
            None => default,
            Some(n) if (1..=10_000_000).contains(&n) => n,
            Some(n) => return Err(invalid(key, format!("{n} is not between 1 and 10000000"))),
        };
    }
    Ok(config)
}

/// A registry URL: `postgres://` or `postgresql://`, without a password (that goes into
/// `registry.password-file`, never into a config file others may read).
fn check_postgres_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
    else {
        // Not echoed: a mistyped scheme may still carry a password.
        return Err("is not a postgres:// URL (postgres://USER@HOST[:PORT]/DATABASE)".to_owned());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && userinfo.contains(':')
    {
        return Err(
            "holds a password: remove it from the URL and put it in registry.password-file \
             (mode 0600)"
                .to_owned(),
        );
    }
    if url.contains("password=") {
        return Err(
            "holds a password parameter: put the password in registry.password-file (mode 0600)"
                .to_owned(),
        );
    }
    Ok(())
}

/// Most `policy-signers` entries.
pub const POLICY_SIGNERS_MAX: usize = 16;

/// Reads `policy-signers` (PEM public keys of ECDSA P-256).
fn signers(
    file: &Path,
    paths: &[PathBuf],
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Signers, ServerConfigError> {
    if paths.len() > POLICY_SIGNERS_MAX {
        return Err(ServerConfigError::Invalid {
            file: file.to_owned(),
            key: "policy-signers",
            message: format!("{} files; at most {POLICY_SIGNERS_MAX}", paths.len()),
        });
    }
    let mut signers = Signers::new();
    for p in paths {
        let path = resolve(p.clone());
        let text = read_limited(file, &path, "policy-signers file")?;
        signers
            .add_pem(text.as_bytes())
            .map_err(|e| ServerConfigError::Invalid {
                file: file.to_owned(),
                key: "policy-signers",
                message: format!("{}: {e}", path.display()),
            })?;
    }
    Ok(signers)
}

type Invalid<'a> = dyn Fn(&'static str, String) -> ServerConfigError + 'a;

/// `bus`, `broker` and `nats-url`: which bus, and its (first) address.
fn bus_and_broker(
    raw: &RawConfig,
    invalid: &Invalid<'_>,
) -> Result<(Bus, Broker), ServerConfigError> {
    match raw.bus.as_deref() {
        None | Some("mqtt") => {
            if raw.nats_url.is_some() {
                return Err(invalid(
                    "nats-url",
                    "set, but bus is mqtt; set bus: nats or remove nats-url".to_owned(),
                ));
            }
            let url = raw.broker.as_deref().ok_or_else(|| {
                invalid(
                    "broker",
                    "missing field `broker` (required with bus: mqtt): mqtt://HOST:PORT or \
                     mqtts://HOST:PORT"
                        .to_owned(),
                )
            })?;
            let broker = Broker::parse(url).map_err(|m| invalid("broker", m))?;
            Ok((Bus::Mqtt, broker))
        }
        Some("nats") => {
            if raw.broker.is_some() {
                return Err(invalid(
                    "broker",
                    "set, but bus is nats: the server connects to nats-url (agents keep using \
                     the MQTT listeners); remove broker"
                        .to_owned(),
                ));
            }
            let urls = match &raw.nats_url {
                None => Vec::new(),
                Some(RawUrls::One(u)) => vec![u.clone()],
                Some(RawUrls::Many(u)) => u.clone(),
            };
            if urls.is_empty() {
                return Err(invalid(
                    "nats-url",
                    "required with bus: nats: nats://HOST:PORT (or a list of them)".to_owned(),
                ));
            }
            if urls.len() > 64 {
                return Err(invalid(
                    "nats-url",
                    format!("{} URLs; at most 64", urls.len()),
                ));
            }
            let mut parsed = Vec::with_capacity(urls.len());
            for u in &urls {
                parsed.push(parse_nats_url(u).map_err(|m| invalid("nats-url", m))?);
            }
            if parsed.iter().any(|b| b.tls) != parsed.iter().all(|b| b.tls) {
                return Err(invalid(
                    "nats-url",
                    "mixes nats:// and tls:// URLs; use one scheme for the whole cluster"
                        .to_owned(),
                ));
            }
            let mut broker = parsed.swap_remove(0);
            broker.url = urls.join(",");
            Ok((Bus::Nats { urls }, broker))
        }
        Some(other) => Err(invalid(
            "bus",
            format!("{other:?} is not a bus; use mqtt (default) or nats"),
        )),
    }
}

/// A SPIFFE trust domain name: lowercase letters, digits, `.`, `-`, `_` (SPIFFE ID spec 2.1).
fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// `<hostname>-<pid>`, with characters a topic level cannot hold replaced by `-` and cut to
/// the protocol's node id limit.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    node_id_from(host.trim(), std::process::id())
}

fn node_id_from(host: &str, pid: u32) -> String {
    let pid = format!("-{pid}");
    let room = ekattest_protocol::limits::NODE_ID_MAX.saturating_sub(pid.len());
    let mut id: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(room)
        .collect();
    if id.is_empty() {
        id.push_str("ekattest");
    }
    id.push_str(&pid);
    id
}

/// Parses a duration such as `90s`, `5m`, `1h`, `1h30m`, `250ms`, `2d`
/// ([`ekattest_protocol::duration::parse`], shared with the agent).
///
/// # Errors
/// A message naming the text and the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    ekattest_protocol::duration::parse(text).map_err(|e| format!("{text:?} {e}"))
}

#[cfg(test)]
mod tests;
