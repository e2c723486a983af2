//! The stage every fleet mode attests against: a bus (a per-run mosquitto, an existing
//! broker, or a per-run NATS cluster), an SVID CA, a policy document, K `ekattest-server`
//! processes with their device registry ([`Registry`]: a SQLite file each, one PostgreSQL
//! the stage starts for all of them, or none), an optional MQTT fault proxy in front of the
//! bus, and the hook that fires the run's timed faults at them ([`Stage::faults`]).
//!
//! A mode describes its stage with a [`StageConfig`], starts it once with [`Stage::start`]
//! and hands its devices what they need: the MQTT listeners ([`Stage::device_urls`]), the
//! trust bundle ([`Svid::bundle`]), the servers' metrics ([`Stage::metric_sum`]). Dropping
//! the stage stops everything in order: servers first (they hold sessions on the bus), then
//! the proxy, the broker, the NATS cluster and PostgreSQL, each removing its own temporary
//! folder. [`Stage::registry_report`] reads the registry back after the servers have written
//! it. The run folder the stage writes into (CA, policy, one folder per server, the SQLite
//! registries) belongs to the mode, which keeps it alive longer than the stage.
//!
//! The stage never changes the process's working directory or environment and never binds
//! a fixed port. Devices (swtpm, soft TPMs, QEMU boards) are not part of it: they stay in
//! their modes.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::broker::{Broker, BrokerOptions};
use crate::daemons::{ServerProcess, ServerSpec, metric_value};
use crate::error::{Error, Result};
use crate::faults::mqtt_proxy::{MqttProxy, ProxyOptions, ProxyStats};
use crate::faults::{FaultPlan, ProcessTargets, Scheduler};
use crate::nats::NatsCluster;
use crate::report::RegistryReport;

mod registry;

pub use registry::Registry;

/// How long the in-process SVID CA is valid.
const SVID_CA_VALIDITY: Duration = Duration::from_secs(86_400);
/// How long [`Stage::registry_report`] waits for the servers' registry queues to empty.
const REGISTRY_FLUSH_WAIT: Duration = Duration::from_secs(60);

/// The bus the servers and devices meet on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// A per-run mosquitto on a free loopback port (plaintext, no ACL).
    Mosquitto,
    /// An existing broker: `url` (`mqtt://HOST:PORT`) for the servers and first device
    /// listener, `more` further MQTT listeners for devices, and `nats_urls` to put the
    /// servers on `bus: nats` (then `url` must be a NATS node's MQTT listener).
    External {
        /// The servers' broker.
        url: String,
        /// More MQTT listeners for devices, after `url`.
        more: Vec<String>,
        /// The servers' `nats-url`s (empty: the servers use MQTT).
        nats_urls: Vec<String>,
    },
    /// A per-run local NATS cluster of this many nodes (JetStream, MQTT listeners); the
    /// servers run on `bus: nats` and talk MQTT through node 1's listener.
    Nats {
        /// Nodes, at least 1.
        nodes: usize,
    },
}

/// Where the servers' SVID CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvidCa {
    /// A self-signed CA generated in process (`svid-ca.pem`, `svid-ca.key`); it is also the
    /// devices' trust bundle.
    Generate,
    /// A root made with `ekattestctl ca create` (`svid-root.pem`, the devices' trust
    /// bundle) and a signer it issues with `ekattestctl ca issue-signer`
    /// (`svid-signer.pem`), which the servers sign with: the operator's procedure.
    Ctl {
        /// The `ekattestctl` binary.
        bin: PathBuf,
    },
}

/// The servers' policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// This text, written to `policy.yaml` in the run folder.
    Document(String),
    /// A file the mode has written already.
    File(PathBuf),
}

/// The server settings a mode tunes (the rest comes from the stage); `None` keeps the
/// server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerSettings {
    /// `max-sessions`.
    pub max_sessions: Option<usize>,
    /// `log-level`.
    pub log_level: Option<String>,
    /// `workers`.
    pub workers: Option<usize>,
    /// `login-burst` (0: no login limit).
    pub login_burst: Option<u32>,
    /// `agent-id-from-ek`.
    pub agent_id_from_ek: Option<bool>,
    /// `reload-interval`.
    pub reload_interval: Option<Duration>,
}

/// What a [`Stage`] is made of.
#[derive(Debug, Clone)]
pub struct StageConfig {
    /// The run folder: CA files, `policy.yaml` and one folder per server go here. It must
    /// outlive the stage.
    pub dir: PathBuf,
    /// The servers' cluster id.
    pub cluster: &'static str,
    /// The SPIFFE trust domain.
    pub trust_domain: &'static str,
    /// The bus.
    pub bus: Bus,
    /// The SVID CA.
    pub ca: SvidCa,
    /// The policy.
    pub policy: Policy,
    /// `ekattest-server` processes (nodes `node-1` ..= `node-K`).
    pub servers: usize,
    /// The `ekattest-server` binary.
    pub server_bin: PathBuf,
    /// The name of server `k`'s folder in the run folder (`k` from 1).
    pub server_dir: fn(usize) -> String,
    /// Settings of every server.
    pub server: ServerSettings,
    /// Put the MQTT fault proxy with these options between the devices and the bus.
    pub proxy: Option<ProxyOptions>,
    /// The servers' device registry.
    pub registry: Registry,
}

impl StageConfig {
    /// One server (`node-1`, folder `node-1`), a per-run mosquitto, an in-process SVID CA,
    /// no proxy, the server's default registry (SQLite in its folder).
    #[must_use]
    pub fn new(
        dir: &Path,
        cluster: &'static str,
        trust_domain: &'static str,
        server_bin: &Path,
        policy: Policy,
    ) -> Self {
        Self {
            dir: dir.to_owned(),
            cluster,
            trust_domain,
            bus: Bus::Mosquitto,
            ca: SvidCa::Generate,
            policy,
            servers: 1,
            server_bin: server_bin.to_owned(),
            server_dir: |k| format!("node-{k}"),
            server: ServerSettings::default(),
            proxy: None,
            registry: Registry::default(),
        }
    }
}

/// The SVID CA's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// The certificate the servers sign SVIDs with.
    pub cert: PathBuf,
    /// Its private key (mode 0600).
    pub key: PathBuf,
    /// The devices' trust bundle (the root; `cert` itself for [`SvidCa::Generate`]).
    pub bundle: PathBuf,
}

/// A running stage (see the module docs); stopped on drop.
#[derive(Debug)]
pub struct Stage {
    servers: Vec<Arc<Mutex<ServerProcess>>>,
    server_startup: Vec<Duration>,
    proxy: Option<MqttProxy>,
    broker: Option<Arc<Mutex<Broker>>>,
    nats: Option<Arc<Mutex<NatsCluster>>>,
    nats_startup: Option<Duration>,
    url: String,
    listeners: Vec<String>,
    nats_urls: Vec<String>,
    svid: Svid,
    policy_file: PathBuf,
    registry: Registry,
    /// The PostgreSQL of `--registry postgres`; dropped after the servers.
    database: Option<registry::Database>,
    /// Each server's folder (its `state-dir`), `node-1` first.
    server_dirs: Vec<PathBuf>,
}

impl Stage {
    /// Creates the SVID CA and the policy file, starts the bus, the servers and the proxy.
    ///
    /// # Errors
    /// The step that failed: [`Error::Ca`]/[`Error::Ctl`] (CA), [`Error::Io`] (files),
    /// [`Error::Process`] (mosquitto, NATS, PostgreSQL, a server), [`Error::NoNatsNode`],
    /// [`Error::BrokerUrl`]/[`Error::BrokerResolve`]/[`Error::Spawn`] (proxy). What was
    /// started before is stopped again.
    pub fn start(config: &StageConfig) -> Result<Self> {
        let dir = &config.dir;
        let svid = match &config.ca {
            SvidCa::Generate => generate_ca(dir, config.trust_domain)?,
            SvidCa::Ctl { bin } => ctl_ca(bin, dir, config.trust_domain)?,
        };
        let policy_file = match &config.policy {
            Policy::Document(text) => {
                let f = dir.join("policy.yaml");
                crate::error::write(&f, text)?;
                f
            }
            Policy::File(f) => f.clone(),
        };
        let mut stage = Self {
            servers: Vec::with_capacity(config.servers),
            server_startup: Vec::with_capacity(config.servers),
            proxy: None,
            broker: None,
            nats: None,
            nats_startup: None,
            url: String::new(),
            listeners: Vec::new(),
            nats_urls: Vec::new(),
            svid,
            policy_file,
            registry: config.registry,
            database: None,
            server_dirs: Vec::with_capacity(config.servers),
        };
        match &config.bus {
            Bus::External {
                url,
                more,
                nats_urls,
            } => {
                stage.url.clone_from(url);
                stage.listeners = std::iter::once(url.clone()).chain(more.clone()).collect();
                stage.nats_urls.clone_from(nats_urls);
            }
            Bus::Nats { nodes } => {
                let t = Instant::now();
                let cluster = NatsCluster::start(*nodes).map_err(|source| Error::Process {
                    what: "the NATS cluster".into(),
                    source,
                })?;
                stage.nats_startup = Some(t.elapsed());
                stage.listeners = cluster.mqtt_urls();
                stage.nats_urls = cluster.nats_urls();
                stage.nats = Some(Arc::new(Mutex::new(cluster)));
                stage.url = stage.listeners.first().cloned().ok_or(Error::NoNatsNode)?;
            }
            Bus::Mosquitto => {
                let b = Broker::start(&BrokerOptions {
                    tls: false,
                    acl: false,
                })
                .map_err(|source| Error::Process {
                    what: "mosquitto".into(),
                    source,
                })?;
                stage.url = b.url();
                stage.listeners = vec![stage.url.clone()];
                stage.broker = Some(Arc::new(Mutex::new(b)));
            }
        }
        if config.registry == Registry::Postgres {
            stage.database = Some(registry::Database::start(dir)?);
        }
        let registry_mapping = registry::mapping(config.registry, stage.database.as_ref())?;
        for k in 1..=config.servers {
            let node = format!("node-{k}");
            let sdir = dir.join((config.server_dir)(k));
            crate::error::create_dir_all(&sdir)?;
            let mut spec = ServerSpec::new(
                stage.url.clone(),
                config.cluster,
                node.clone(),
                config.trust_domain,
                &stage.svid.cert,
                &stage.svid.key,
            );
            spec.policy_files = vec![stage.policy_file.clone()];
            spec.nats_urls.clone_from(&stage.nats_urls);
            let s = &config.server;
            spec.max_sessions = s.max_sessions;
            spec.log_level.clone_from(&s.log_level);
            spec.workers = s.workers;
            spec.login_burst = s.login_burst;
            spec.agent_id_from_ek = s.agent_id_from_ek;
            spec.reload_interval = s.reload_interval;
            spec.registry.clone_from(&registry_mapping);
            let t = Instant::now();
            let server =
                ServerProcess::start(&config.server_bin, &spec, &sdir).map_err(|source| {
                    Error::Process {
                        what: format!("ekattest-server {node}"),
                        source,
                    }
                })?;
            stage.server_startup.push(t.elapsed());
            stage.servers.push(Arc::new(Mutex::new(server)));
            stage.server_dirs.push(sdir);
        }
        if let Some(options) = &config.proxy {
            let upstream = broker_addr(&stage.url)?;
            stage.proxy =
                Some(
                    MqttProxy::start(upstream, *options).map_err(|source| Error::Spawn {
                        what: "the MQTT fault proxy".into(),
                        source,
                    })?,
                );
        }
        Ok(stage)
    }

    /// The broker URL the servers use (the first MQTT listener).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every MQTT listener of the bus, the servers' first: one for mosquitto, `url` and
    /// `more` for an external bus, one per node for a NATS cluster. Devices do not go
    /// through the proxy here; see [`Stage::device_urls`].
    #[must_use]
    pub fn listeners(&self) -> &[String] {
        &self.listeners
    }

    /// The MQTT listeners devices connect to: the proxy's URL instead of the first listener
    /// when the stage has one.
    #[must_use]
    pub fn device_urls(&self) -> Vec<String> {
        let mut urls = self.listeners.clone();
        if let (Some(p), Some(first)) = (&self.proxy, urls.first_mut()) {
            *first = p.url();
        }
        urls
    }

    /// The servers' `nats-url`s (empty: the servers use MQTT).
    #[must_use]
    pub fn nats_urls(&self) -> &[String] {
        &self.nats_urls
    }

    /// The SVID CA's files.
    #[must_use]
    pub fn svid(&self) -> &Svid {
        &self.svid
    }

    /// The servers' policy file.
    #[must_use]
    pub fn policy_file(&self) -> &Path {
        &self.policy_file
    }

    /// The per-run mosquitto, if the stage started one.
    #[must_use]
    pub fn broker(&self) -> Option<&Arc<Mutex<Broker>>> {
        self.broker.as_ref()
    }

    /// The per-run NATS cluster, if the stage started one.
    #[must_use]
    pub fn nats(&self) -> Option<&Arc<Mutex<NatsCluster>>> {
        self.nats.as_ref()
    }

    /// How long the NATS cluster took to come up, if the stage started one.
    #[must_use]
    pub fn nats_startup(&self) -> Option<Duration> {
        self.nats_startup
    }

    /// The servers, `node-1` first.
    #[must_use]
    pub fn servers(&self) -> &[Arc<Mutex<ServerProcess>>] {
        &self.servers
    }

    /// How long each server took to get ready, `node-1` first.
    #[must_use]
    pub fn server_startup(&self) -> &[Duration] {
        &self.server_startup
    }

    /// Server `i` (0: `node-1`), locked.
    #[must_use]
    pub fn server(&self, i: usize) -> Option<MutexGuard<'_, ServerProcess>> {
        self.servers
            .get(i)
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The MQTT fault proxy, if the stage has one.
    #[must_use]
    pub fn proxy(&self) -> Option<&MqttProxy> {
        self.proxy.as_ref()
    }

    /// What the proxy has carried so far, if the stage has one.
    #[must_use]
    pub fn proxy_stats(&self) -> Option<ProxyStats> {
        self.proxy.as_ref().map(MqttProxy::stats)
    }

    /// Sum of the metric `series` over every server that reports it (`None`: none does).
    #[must_use]
    pub fn metric_sum(&self, series: &str) -> Option<f64> {
        let mut total = None;
        for s in &self.servers {
            let text = s.lock().unwrap_or_else(PoisonError::into_inner).metrics();
            if let Ok(text) = text
                && let Some(v) = metric_value(&text, series)
            {
                total = Some(total.unwrap_or(0.0) + v);
            }
        }
        total
    }

    /// The servers' registry backend.
    #[must_use]
    pub fn registry(&self) -> Registry {
        self.registry
    }

    /// The processes of the stage's PostgreSQL now (postmaster and children; empty unless
    /// `--registry postgres`), for CPU accounting.
    #[must_use]
    pub fn registry_pids(&self) -> Vec<u32> {
        self.database
            .as_ref()
            .map_or_else(Vec::new, registry::Database::pids)
    }

    /// Waits until every running server has written its queued registry events (its
    /// `attestation_registry_queue` is 0; at most a minute), reads the events written and
    /// dropped from their metrics, stops the stage ([`Stage::stop`]: a stopping server
    /// writes what is still queued) and reads the registry back: device records (summed
    /// over the servers' SQLite files), distinct EKs across them, bytes on disk.
    /// `eks_attested` is the distinct EKs the mode saw attested, reported next to them.
    pub fn registry_report(&mut self, eks_attested: usize) -> RegistryReport {
        let written = if self.registry == Registry::None {
            // Nothing is queued without a registry.
            registry::Written {
                flushed: true,
                ..registry::Written::default()
            }
        } else {
            registry::Written::wait(&self.servers, REGISTRY_FLUSH_WAIT)
        };
        self.stop();
        registry::read(
            self.registry,
            self.database.as_ref(),
            &self.server_dirs,
            written,
            eks_attested,
        )
    }

    /// Starts the fault clock now and fires `plan`'s timed faults (broker restart, server
    /// kill, NATS node kill) at this stage's own processes. Call it when the attestation
    /// phase starts; finish (or drop) the scheduler before the stage.
    ///
    /// # Errors
    /// [`Error::Spawn`] when the scheduler's thread cannot be started.
    pub fn faults(&self, plan: &FaultPlan) -> Result<Scheduler> {
        Scheduler::start(
            plan,
            Box::new(ProcessTargets {
                broker: self.broker.clone(),
                servers: self.servers.clone(),
                nats: self.nats.clone(),
            }),
        )
        .map_err(|source| Error::Spawn {
            what: "the fault scheduler".into(),
            source,
        })
    }

    /// One line per NATS node with what its log says (empty without a NATS cluster).
    #[must_use]
    pub fn nats_log_summaries(&self) -> Vec<String> {
        self.nats.as_ref().map_or_else(Vec::new, |c| {
            let c = c.lock().unwrap_or_else(PoisonError::into_inner);
            (0..c.node_count()).map(|i| c.log_summary(i)).collect()
        })
    }

    /// Stops the servers, the proxy and the broker (the NATS cluster stays for its logs
    /// until drop). Idempotent; drop does it too.
    pub fn stop(&mut self) {
        for s in &self.servers {
            s.lock().unwrap_or_else(PoisonError::into_inner).stop();
        }
        self.proxy = None;
        if let Some(b) = &self.broker {
            b.lock().unwrap_or_else(PoisonError::into_inner).stop();
        }
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.stop();
        // The servers' processes go with their last handle; the NATS nodes with the cluster.
        self.servers.clear();
        self.broker = None;
        self.nats = None;
        self.database = None;
    }
}

/// The socket address of an `mqtt://HOST:PORT` broker.
fn broker_addr(url: &str) -> Result<SocketAddr> {
    let hostport = url.strip_prefix("mqtt://").ok_or_else(|| {
        Error::BrokerUrl(format!(
            "--drop/--corrupt need a plain mqtt://HOST:PORT broker, not {url:?}"
        ))
    })?;
    let hostport = hostport.trim_end_matches('/');
    let resolved = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_socket_addrs()
    } else {
        (hostport, 1883).to_socket_addrs()
    };
    resolved
        .map_err(|source| Error::BrokerResolve {
            url: url.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| Error::BrokerAddress {
            url: url.to_owned(),
        })
}

/// An in-process SVID CA in `dir`.
fn generate_ca(dir: &Path, trust_domain: &str) -> Result<Svid> {
    let (_, ca_pem, key_pem) =
        ekattest_server::svid::Authority::generate(trust_domain, SVID_CA_VALIDITY).map_err(
            |e| Error::Ca {
                what: "cannot create the SVID CA".into(),
                source: Box::new(e),
            },
        )?;
    let cert = dir.join("svid-ca.pem");
    let key = dir.join("svid-ca.key");
    crate::error::write(&cert, &ca_pem)?;
    crate::error::write(&key, &key_pem)?;
    // The server refuses a CA key that group or others may read.
    crate::process::make_private(&key)?;
    Ok(Svid {
        bundle: cert.clone(),
        cert,
        key,
    })
}

/// A root and a signer made with `ekattestctl`, in `dir`.
fn ctl_ca(bin: &Path, dir: &Path, trust_domain: &str) -> Result<Svid> {
    let root_cert = dir.join("svid-root.pem");
    let root_key = dir.join("svid-root.key");
    let cert = dir.join("svid-signer.pem");
    let key = dir.join("svid-signer.key");
    let ctl = |args: &[&std::ffi::OsStr], what: &'static str| -> Result<()> {
        let out = Command::new(bin)
            .args(args)
            .output()
            .map_err(Error::io("run", bin))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Ctl {
                what,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    };
    ctl(
        &[
            "ca".as_ref(),
            "create".as_ref(),
            "--trust-domain".as_ref(),
            trust_domain.as_ref(),
            "--cert".as_ref(),
            root_cert.as_os_str(),
            "--key".as_ref(),
            root_key.as_os_str(),
        ],
        "ca create",
    )?;
    ctl(
        &[
            "ca".as_ref(),
            "issue-signer".as_ref(),
            "--ca-cert".as_ref(),
            root_cert.as_os_str(),
            "--ca-key".as_ref(),
            root_key.as_os_str(),
            "--cert".as_ref(),
            cert.as_os_str(),
            "--key".as_ref(),
            key.as_os_str(),
        ],
        "ca issue-signer",
    )?;
    Ok(Svid {
        cert,
        key,
        bundle: root_cert,
    })
}

/// `name` in `dir`, else beside this program: the daemons the run starts are built with it.
///
/// # Errors
/// [`Error::BinDir`] when this program's folder is unknown, [`Error::MissingBinary`]
/// (naming `build`, the command that builds it) when the file is not there.
pub fn bin_beside(dir: Option<&Path>, name: &str, build: &'static str) -> Result<PathBuf> {
    let dir = match dir {
        Some(d) => d.to_owned(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
            .ok_or(Error::BinDir)?,
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary { path, build })
    }
}
