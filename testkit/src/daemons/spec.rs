//! The daemons' config files: [`ServerSpec`] and [`AgentSpec`] render the YAML that
//! `ekattest-server --config` and `ekattest-agent run --config` read (keys of
//! `deploy/server.yaml` and `deploy/agent.yaml`; unset keys are left out so the daemons'
//! defaults apply). Pure: nothing here touches a file or a process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::process::{Error, Result};

/// What the `ekattest-server` config file says (keys of `deploy/server.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// `broker`: `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub broker: String,
    /// `tls.ca`: the broker's CA (PEM), for `mqtts://`.
    pub tls_ca: Option<PathBuf>,
    /// `username`.
    pub username: Option<String>,
    /// `password-file`.
    pub password_file: Option<PathBuf>,
    /// `cluster-id`.
    pub cluster: String,
    /// `node-id`.
    pub node: String,
    /// `topic-prefix` (the daemon's default `ekattest/v1` when `None`).
    pub topic_prefix: Option<String>,
    /// `trust-domain`.
    pub trust_domain: String,
    /// `ca-cert`: the SVID CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// `ca-key`: the SVID CA key (PEM).
    pub ca_key: PathBuf,
    /// `policy-files`.
    pub policy_files: Vec<PathBuf>,
    /// `session-ttl`.
    pub session_ttl: Option<Duration>,
    /// `svid-ttl`.
    pub svid_ttl: Option<Duration>,
    /// `max-sessions`.
    pub max_sessions: Option<usize>,
    /// `metrics-address`: `None` picks a free loopback port at start; `Some("")` disables
    /// the endpoint.
    pub metrics_address: Option<String>,
    /// `reload-interval`.
    pub reload_interval: Option<Duration>,
    /// `log-level`.
    pub log_level: Option<String>,
    /// `workers`.
    pub workers: Option<usize>,
    /// `login-burst` (logins per agent id before the rate limit refuses; 0 disables).
    pub login_burst: Option<u32>,
    /// `agent-id-from-ek` (the server's default, true, when `None`): whether a Login's agent
    /// id must be the one derived from its EK (`ek-` + 32 hex digits of its public_hash).
    pub agent_id_from_ek: Option<bool>,
    /// `bus: nats` with these `nats-url`s when not empty (then `broker` is left out);
    /// empty: `bus` unset (MQTT on `broker`).
    pub nats_urls: Vec<String>,
    /// `policy-topic: true` when set (signed documents on the config topic).
    pub policy_topic: bool,
    /// `policy-signers`: PEM public keys of the operators who sign policy documents.
    pub policy_signers: Vec<PathBuf>,
    /// `state-dir` ([`ServerProcess::start`](super::ServerProcess::start) sets the server's
    /// own folder when `None`, so each test server has its own SQLite registry).
    pub state_dir: Option<PathBuf>,
    /// `registry`: the mapping as written (backend, url, password-file, flush-interval...);
    /// `None`: the server's default (SQLite under `state-dir`).
    pub registry: Option<Mapping>,
}

impl ServerSpec {
    /// A spec with the required keys and every optional key unset.
    pub fn new(
        broker: impl Into<String>,
        cluster: impl Into<String>,
        node: impl Into<String>,
        trust_domain: impl Into<String>,
        ca_cert: impl Into<PathBuf>,
        ca_key: impl Into<PathBuf>,
    ) -> Self {
        Self {
            broker: broker.into(),
            tls_ca: None,
            username: None,
            password_file: None,
            cluster: cluster.into(),
            node: node.into(),
            topic_prefix: None,
            trust_domain: trust_domain.into(),
            ca_cert: ca_cert.into(),
            ca_key: ca_key.into(),
            policy_files: Vec::new(),
            session_ttl: None,
            svid_ttl: None,
            max_sessions: None,
            metrics_address: None,
            reload_interval: None,
            log_level: None,
            workers: None,
            login_burst: None,
            agent_id_from_ek: None,
            nats_urls: Vec::new(),
            policy_topic: false,
            policy_signers: Vec::new(),
            state_dir: None,
            registry: None,
        }
    }

    /// The config file's YAML (keys in `deploy/server.yaml` order, unset keys left out).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a path that is not UTF-8.
    pub fn to_yaml(&self) -> Result<String> {
        let mut m = Mapping::new();
        if self.nats_urls.is_empty() {
            put(&mut m, "broker", Some(self.broker.as_str()));
        } else {
            put(&mut m, "bus", Some("nats"));
            let urls = self.nats_urls.iter().map(|u| Value::from(u.as_str()));
            m.insert("nats-url".into(), Value::Sequence(urls.collect()));
        }
        if let Some(ca) = &self.tls_ca {
            let mut tls = Mapping::new();
            put(&mut tls, "ca", Some(path_str(ca)?));
            m.insert("tls".into(), Value::Mapping(tls));
        }
        put(&mut m, "username", self.username.as_deref());
        put(&mut m, "password-file", opt_path(&self.password_file)?);
        put(&mut m, "cluster-id", Some(self.cluster.as_str()));
        put(&mut m, "node-id", Some(self.node.as_str()));
        put(&mut m, "topic-prefix", self.topic_prefix.as_deref());
        put(&mut m, "trust-domain", Some(self.trust_domain.as_str()));
        put(&mut m, "ca-cert", Some(path_str(&self.ca_cert)?));
        put(&mut m, "ca-key", Some(path_str(&self.ca_key)?));
        put(&mut m, "svid-ttl", self.svid_ttl.map(duration).as_deref());
        put(
            &mut m,
            "session-ttl",
            self.session_ttl.map(duration).as_deref(),
        );
        if let Some(n) = self.max_sessions {
            m.insert("max-sessions".into(), Value::from(n as u64));
        }
        put(&mut m, "metrics-address", self.metrics_address.as_deref());
        if !self.policy_files.is_empty() {
            let files = self
                .policy_files
                .iter()
                .map(|p| path_str(p).map(Value::from))
                .collect::<Result<Vec<_>>>()?;
            m.insert("policy-files".into(), Value::Sequence(files));
        }
        put(
            &mut m,
            "reload-interval",
            self.reload_interval.map(duration).as_deref(),
        );
        put(&mut m, "log-level", self.log_level.as_deref());
        if let Some(n) = self.login_burst {
            m.insert("login-burst".into(), Value::from(u64::from(n)));
        }
        if let Some(b) = self.agent_id_from_ek {
            m.insert("agent-id-from-ek".into(), Value::from(b));
        }
        if let Some(n) = self.workers {
            m.insert("workers".into(), Value::from(n as u64));
        }
        if self.policy_topic {
            m.insert("policy-topic".into(), Value::Bool(true));
        }
        if !self.policy_signers.is_empty() {
            let signers = self
                .policy_signers
                .iter()
                .map(|p| path_str(p).map(Value::from))
                .collect::<Result<Vec<_>>>()?;
            m.insert("policy-signers".into(), Value::Sequence(signers));
        }
        put(&mut m, "state-dir", opt_path(&self.state_dir)?);
        if let Some(r) = &self.registry {
            m.insert("registry".into(), Value::Mapping(r.clone()));
        }
        render(&m)
    }
}

/// What the `ekattest-agent` config file says (keys of `deploy/agent.yaml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// `broker` (the first URL when `fallback_brokers` is not empty).
    pub broker: String,
    /// More `broker` URLs: when not empty, `broker` is written as the list `[broker,
    /// fallback...]` and the agent fails over along it.
    pub fallback_brokers: Vec<String>,
    /// `tls.ca`: the broker's CA (PEM), for `mqtts://`.
    pub tls_ca: Option<PathBuf>,
    /// `username`.
    pub username: Option<String>,
    /// `password-file`.
    pub password_file: Option<PathBuf>,
    /// `cluster-id` (the seed's key).
    pub cluster: String,
    /// `tpm`: the TPM spec (`/dev/tpmrm0`, `swtpm:127.0.0.1:PORT`).
    pub tpm: String,
    /// `ek`: which EK to attest with (`rsa2048`, `p256`, ... as the agent spells them).
    pub ek: Option<String>,
    /// `trust-bundle`: the server's SVID CA (PEM).
    pub trust_bundle: PathBuf,
    /// `data-dir`: where svid.pem, svid.key and bundle.pem are written.
    pub data_dir: PathBuf,
    /// `agent-id` (also the MQTT client id).
    pub agent_id: Option<String>,
    /// `topic-prefix`.
    pub topic_prefix: Option<String>,
    /// `log-level` (`debug` shows `Sending Login`).
    pub log_level: Option<String>,
    /// `metrics-textfile`.
    pub metrics_textfile: Option<PathBuf>,
    /// `response-timeout`.
    pub response_timeout: Option<Duration>,
    /// `retry.initial`.
    pub retry_initial: Option<Duration>,
    /// `retry.max`.
    pub retry_max: Option<Duration>,
    /// Extra command-line arguments after `run --config FILE [--once]` (e.g. `--timeout`).
    pub extra_args: Vec<String>,
}

impl AgentSpec {
    /// A spec with the required keys and every optional key unset.
    pub fn new(
        broker: impl Into<String>,
        cluster: impl Into<String>,
        tpm: impl Into<String>,
        trust_bundle: impl Into<PathBuf>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            broker: broker.into(),
            fallback_brokers: Vec::new(),
            tls_ca: None,
            username: None,
            password_file: None,
            cluster: cluster.into(),
            tpm: tpm.into(),
            ek: None,
            trust_bundle: trust_bundle.into(),
            data_dir: data_dir.into(),
            agent_id: None,
            topic_prefix: None,
            log_level: None,
            metrics_textfile: None,
            response_timeout: None,
            retry_initial: None,
            retry_max: None,
            extra_args: Vec::new(),
        }
    }

    /// The config file's YAML: the seed's three keys first (`cluster-id`,
    /// `disable-kubernetes-attestation: true`, `agent-attestors: [{type: tpm_ek}]`), then
    /// ours, unset keys left out.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a path that is not UTF-8.
    pub fn to_yaml(&self) -> Result<String> {
        let mut m = Mapping::new();
        put(&mut m, "cluster-id", Some(self.cluster.as_str()));
        m.insert("disable-kubernetes-attestation".into(), Value::Bool(true));
        let mut tpm_ek = Mapping::new();
        put(&mut tpm_ek, "type", Some("tpm_ek"));
        m.insert(
            "agent-attestors".into(),
            Value::Sequence(vec![Value::Mapping(tpm_ek)]),
        );
        if self.fallback_brokers.is_empty() {
            put(&mut m, "broker", Some(self.broker.as_str()));
        } else {
            let urls = std::iter::once(&self.broker)
                .chain(&self.fallback_brokers)
                .map(|u| Value::from(u.as_str()));
            m.insert("broker".into(), Value::Sequence(urls.collect()));
        }
        if let Some(ca) = &self.tls_ca {
            let mut tls = Mapping::new();
            put(&mut tls, "ca", Some(path_str(ca)?));
            m.insert("tls".into(), Value::Mapping(tls));
        }
        put(&mut m, "username", self.username.as_deref());
        put(&mut m, "password-file", opt_path(&self.password_file)?);
        put(&mut m, "tpm", Some(self.tpm.as_str()));
        put(&mut m, "ek", self.ek.as_deref());
        put(&mut m, "trust-bundle", Some(path_str(&self.trust_bundle)?));
        put(&mut m, "data-dir", Some(path_str(&self.data_dir)?));
        put(&mut m, "agent-id", self.agent_id.as_deref());
        put(&mut m, "topic-prefix", self.topic_prefix.as_deref());
        put(&mut m, "log-level", self.log_level.as_deref());
        put(
            &mut m,
            "metrics-textfile",
            opt_path(&self.metrics_textfile)?,
        );
        if self.retry_initial.is_some() || self.retry_max.is_some() {
            let mut r = Mapping::new();
            put(
                &mut r,
                "initial",
                self.retry_initial.map(duration).as_deref(),
            );
            put(&mut r, "max", self.retry_max.map(duration).as_deref());
            m.insert("retry".into(), Value::Mapping(r));
        }
        put(
            &mut m,
            "response-timeout",
            self.response_timeout.map(duration).as_deref(),
        );
        render(&m)
    }
}

fn put(m: &mut Mapping, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        m.insert(key.into(), v.into());
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::Invalid(format!("path {} is not UTF-8", p.display())))
}

fn opt_path(p: &Option<PathBuf>) -> Result<Option<&str>> {
    p.as_deref().map(path_str).transpose()
}

/// A duration as the daemons' parsers read it: `90s` when whole seconds, else `1500ms`.
pub fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

fn render(m: &Mapping) -> Result<String> {
    serde_norway::to_string(m).map_err(|e| Error::Invalid(format!("cannot render YAML: {e}")))
}
