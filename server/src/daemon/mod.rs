//! The ekattest-server daemon: MQTT in, attestation workers, MQTT out (DESIGN.md sections
//! 2 and 5), plus metrics, JSON logs and policy hot reload.
//!
//! - [`config`]: the daemon's config file.
//! - [`bus`]: rumqttc options and the rustls client configuration.
//! - [`handler`]: what a worker does with a Login or an Answer (log lines, metrics).
//! - [`metrics`]: Prometheus counters and the `/metrics` responder.
//! - [`nats`]: `bus: nats` (queue-group logins on a NATS cluster; MQTT topic mapping).
//! - [`ratelimit`]: the per-agent login rate limit.
//! - [`logging`]: the JSON logger.
//! - [`reload`]: the policy document in force and its hot reload.
//! - `router` (private): the MQTT event loop and routing of received messages.
//!
//! Shape: one tokio task drives the rumqttc event loop (or, with `bus: nats`, the NATS
//! subscriptions) and never blocks: it parses the topic,
//! decodes the frame and hands the job to a bounded queue served by `workers` threads (a
//! full queue rejects the Login with `server busy` instead of growing). Workers call the
//! sans-IO [`crate::attest::Attestor`] and queue the reply on the MQTT client. Sessions live
//! in this process, so they survive a broker reconnect; a broker outage only delays. The
//! server never waits on an agent. Nothing here panics on network input or logs a secret.

pub mod bus;
pub mod config;
pub mod handler;
pub mod logging;
pub mod metrics;
pub mod nats;
pub mod ratelimit;
pub mod reload;
mod router;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use ekattest_protocol::limits;
use rumqttc::{AsyncClient, QoS};

use self::bus::Connection;
use self::config::{Bus, ServerConfig};
use self::handler::{Handler, Job, Outbox};
use self::metrics::Metrics;
use self::reload::{Decision, Inbox, PolicyState, Reloader, TopicRules};
use self::router::{Refusals, Router, drain, drive};
use crate::attest::Attestor;
use crate::config::{ConfigError, MAX_DOCUMENT_BYTES};
use crate::registry::{BanList, StoreError, Writer, WriterHandle};
use crate::svid::{Authority, SvidError};

/// Jobs queued per worker before logins are refused with `server busy`.
const QUEUE_PER_WORKER: usize = 256;
/// How often expired sessions are dropped.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// First reconnect delay; doubles up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long shutdown waits for queued replies to reach the broker.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the daemon cannot start (every variant is a configuration or environment problem the
/// operator fixes; the daemon exits 1).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The SVID CA cannot be loaded.
    #[error("ca-cert / ca-key: {0}")]
    Ca(#[from] SvidError),
    /// The CA certificate names another trust domain than `trust-domain`.
    #[error(
        "trust-domain is {configured:?} but the CA certificate is for {ca:?}; use the CA of \
         {configured:?} or fix trust-domain"
    )]
    TrustDomain {
        /// `trust-domain`.
        configured: String,
        /// The CA's `spiffe://` URI SAN.
        ca: String,
    },
    /// A policy file cannot be read or is invalid.
    #[error("policy-files ({files}): {source}")]
    Policy {
        /// The files.
        files: String,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// The node id cannot be used by the attestor.
    #[error("node-id: {0}")]
    Node(String),
    /// The broker connection cannot be configured (TLS files).
    #[error("{0}")]
    Bus(#[from] bus::BusError),
    /// The NATS connection cannot be set up (`nats-url`, subscriptions).
    #[error("nats: {0}")]
    Nats(String),
    /// The metrics address cannot be bound.
    #[error("metrics-address {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The tokio runtime or a thread cannot be started.
    #[error("cannot start: {0}")]
    Runtime(#[source] std::io::Error),
    /// The registry cannot be opened (set `registry` in the config, or `backend: none`).
    #[error("{0}")]
    Registry(#[from] StoreError),
}

/// What `--check` and start-up load before connecting.
#[derive(Debug)]
pub struct Loaded {
    /// The SVID CA.
    pub authority: Authority,
    /// The reloader, holding the initial document's hash.
    pub reloader: Reloader,
    /// The initial document (`None` without policy files: wait for the config topic).
    pub initial: Option<Decision>,
}

/// Loads the CA, checks its trust domain, loads and merges the policy files and checks the
/// TLS files: everything `ekattest-server --check` validates.
///
/// # Errors
/// [`DaemonError`] naming the key or file at fault.
pub fn load(config: &ServerConfig) -> Result<Loaded, DaemonError> {
    let authority = Authority::load(&config.ca_cert, &config.ca_key)?;
    if let Some(ca) = authority.trust_domain()
        && ca != config.trust_domain
    {
        return Err(DaemonError::TrustDomain {
            configured: config.trust_domain.clone(),
            ca: ca.to_owned(),
        });
    }
    if config.broker.tls || config.bus != Bus::Mqtt {
        bus::tls_config(&config.tls)?;
    }
    Attestor::new(&config.node_id, Some(&config.trust_domain), config.sessions)
        .map_err(DaemonError::Node)?;
    let mut reloader = if config.policy_topic {
        Reloader::with_topic(TopicRules {
            cluster: config.cluster_id.clone(),
            signers: config.policy_signers.clone(),
        })
    } else {
        Reloader::new()
    };
    let initial = if config.policy_files.is_empty() {
        None
    } else {
        let files = files_label(&config.policy_files);
        let modified = reload::newest_modification(&config.policy_files);
        let parts =
            reload::read_files(&config.policy_files).map_err(|source| DaemonError::Policy {
                files: files.clone(),
                source,
            })?;
        match reloader.consider_files(&parts, modified) {
            Decision::Invalid { error, .. } => {
                return Err(DaemonError::Policy {
                    files,
                    source: error,
                });
            }
            decision => Some(decision),
        }
    };
    Ok(Loaded {
        authority,
        reloader,
        initial,
    })
}

fn files_label(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the daemon until SIGTERM or SIGINT. The JSON logger should be installed first.
///
/// # Errors
/// [`DaemonError`] if start-up fails; once running, broker problems are retried forever.
pub fn run(config: ServerConfig) -> Result<(), DaemonError> {
    let loaded = load(&config)?;
    // Before the runtime: the PostgreSQL client runs its own, which may not start inside
    // another.
    let registry = open_registry(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ekattest-io")
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(config, loaded, registry))
}

/// The running registry: its writer, the handle workers queue events on, the bans.
#[derive(Debug)]
pub struct Registry {
    /// The writer thread.
    pub writer: Writer,
    /// What workers hold.
    pub handle: WriterHandle,
    /// The bans in force, refreshed by the writer.
    pub bans: Arc<BanList>,
}

/// Opens the configured registry (creating and migrating it as needed), reads its bans
/// and starts its writer; `None` with `registry: {backend: none}`.
///
/// # Errors
/// [`DaemonError::Registry`] naming the database and what to do.
pub fn open_registry(config: &ServerConfig) -> Result<Option<Registry>, DaemonError> {
    let backend = config.registry.backend.clone();
    // A thread of its own: the PostgreSQL client may not run on a runtime's thread.
    let opened = std::thread::spawn(move || backend.open())
        .join()
        .unwrap_or_else(|_| {
            Err(StoreError::Open {
                db: "registry".into(),
                message: "the thread opening it panicked".into(),
            })
        })?;
    let Some(store) = opened else {
        log::warn!(
            "registry: backend none: attestations are not recorded and bans cannot be enforced"
        );
        return Ok(None);
    };
    let name = store.name().to_owned();
    let bans = Arc::new(BanList::new());
    let (writer, handle) = Writer::start(
        store,
        &config.registry,
        config.node_id.clone(),
        Arc::clone(&bans),
    )?;
    log::info!(
        registry = name.as_str(), bans = bans.len();
        "registry opened"
    );
    Ok(Some(Registry {
        writer,
        handle,
        bans,
    }))
}

/// The MQTT client as the workers' [`Outbox`]: blocks a worker (never the event loop) while
/// the client's request queue is full.
struct MqttOutbox {
    client: AsyncClient,
    runtime: tokio::runtime::Handle,
}

impl Outbox for MqttOutbox {
    fn send(&self, topic: &str, frame: Vec<u8>) -> Result<(), String> {
        self.runtime
            .block_on(self.client.publish(topic, QoS::AtLeastOnce, false, frame))
            .map_err(|e| e.to_string())
    }
}

/// The connection the daemon serves on.
enum Link {
    /// rumqttc's client and event loop.
    Mqtt(AsyncClient, Box<rumqttc::EventLoop>),
    /// async-nats's client.
    Nats(async_nats::Client),
}

fn mqtt_client(config: &ServerConfig) -> Result<(AsyncClient, rumqttc::EventLoop), DaemonError> {
    let connection = Connection {
        broker: &config.broker,
        tls: &config.tls,
        username: config.username.as_deref(),
        password: config.password.as_ref(),
        // Config documents (CA bundles) are far larger than protocol frames.
        max_incoming: MAX_DOCUMENT_BYTES + 4096,
        max_outgoing: 2 * limits::FRAME_MAX,
    };
    let options = connection.options(&format!("ekattest-server-{}", config.node_id))?;
    Ok(AsyncClient::new(options, 1024))
}

async fn serve(
    config: ServerConfig,
    loaded: Loaded,
    registry: Option<Registry>,
) -> Result<(), DaemonError> {
    let metrics = Arc::new(Metrics::default());
    if let Some(r) = &registry {
        metrics.set_registry(Arc::clone(r.handle.stats()));
    }
    let policy = Arc::new(PolicyState::default());
    let files = files_label(&config.policy_files);
    if let Some(decision) = &loaded.initial {
        reload::apply(decision, &files, &policy, &metrics);
    } else if config.policy_topic {
        log::warn!(
            "no policy-files configured: every Login is rejected until a signed document \
             arrives on the config topic (ekattestctl config set cluster --sign-key)"
        );
    } else {
        log::error!(
            "no policy-files configured and policy-topic is false: every Login is rejected; \
             set policy-files (or policy-topic: true with policy-signers)"
        );
    }
    for host in config.plaintext_hosts() {
        log::warn!(
            host = host.as_str();
            "INSECURE: plaintext connection to non-loopback host {host} (insecure-plaintext: \
             true); credentials, Logins and policy documents cross the network unencrypted"
        );
    }
    if config.policy_topic {
        log::info!(
            signers = config.policy_signers.len();
            "policy-topic is true: signed policy documents on the config topic are applied"
        );
    } else {
        log::info!(
            "policy-topic is false: the config topic is not subscribed; policy comes from \
             policy-files only"
        );
    }
    let metrics_listener = match config.metrics_address {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?,
        ),
        None => None,
    };

    let link = match &config.bus {
        Bus::Mqtt => {
            let (client, eventloop) = mqtt_client(&config)?;
            Link::Mqtt(client, Box::new(eventloop))
        }
        Bus::Nats { urls } => Link::Nats(nats::connect(&config, urls, Arc::clone(&metrics)).await?),
    };
    let outbox: Box<dyn Outbox> = match &link {
        Link::Mqtt(client, _) => Box::new(MqttOutbox {
            client: client.clone(),
            runtime: tokio::runtime::Handle::current(),
        }),
        Link::Nats(client) => Box::new(nats::NatsOutbox {
            client: client.clone(),
            runtime: tokio::runtime::Handle::current(),
        }),
    };

    let attestor = Attestor::new(&config.node_id, Some(&config.trust_domain), config.sessions)
        .map_err(DaemonError::Node)?
        .agent_id_from_ek(config.agent_id_from_ek)
        .cluster(&config.cluster_id)
        .require_tpm_key(config.require_tpm_svid_key);
    let attestor = match &registry {
        Some(r) => attestor.bans(Arc::clone(&r.bans)),
        None => attestor,
    };
    if loaded.authority.is_root() {
        log::warn!(
            caCert:% = config.ca_cert.display();
            "ca-cert is the trust domain's root CA, so its private key is online on this server; \
             issue a signer with `ekattestctl ca issue-signer` and configure it as ca-cert / \
             ca-key, so the root key can stay offline"
        );
    }
    let handler = Arc::new(Handler {
        attestor,
        authority: loaded.authority,
        policy: Arc::clone(&policy),
        metrics: Arc::clone(&metrics),
        prefix: config.topic_prefix.clone(),
        cluster: config.cluster_id.clone(),
        svid_ttl: config.svid_ttl,
        outbox,
        registry: registry.as_ref().map(|r| r.handle.clone()),
    });
    let capacity = config.workers.saturating_mul(QUEUE_PER_WORKER);
    let (jobs, workers) = start_workers(&handler, config.workers, capacity)?;

    let inbox = Arc::new(Inbox::default());
    let reload_thread = {
        let (inbox, policy, metrics) = (
            Arc::clone(&inbox),
            Arc::clone(&policy),
            Arc::clone(&metrics),
        );
        let files = config.policy_files.clone();
        let interval = config.reload_interval;
        let reloader = loaded.reloader;
        std::thread::Builder::new()
            .name("ekattest-reload".to_owned())
            .spawn(move || reload::watch(reloader, files, interval, inbox, policy, metrics))
            .map_err(DaemonError::Runtime)?
    };
    let hangup_task = reload_on_hangup(&inbox);
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(metrics::serve(l, Arc::clone(&metrics))));
    let sweep_task = tokio::spawn(sweep(Arc::clone(&handler)));

    let metrics_address = config
        .metrics_address
        .map_or_else(|| "disabled".to_owned(), |a| a.to_string());
    log::info!(
        nodeId = config.node_id.as_str(),
        clusterId = config.cluster_id.as_str(),
        broker = config.broker.url.as_str(),
        trustDomain = config.trust_domain.as_str(),
        workers = config.workers,
        metricsAddress = metrics_address.as_str();
        "ekattest-server started"
    );
    let (replies, nats_subs): (Box<dyn Refusals>, _) = match &link {
        Link::Mqtt(client, _) => (Box::new(client.clone()), None),
        Link::Nats(client) => {
            let (subs, replies) = nats::subscribe(
                client,
                &config.topic_prefix,
                &config.cluster_id,
                &config.node_id,
                config.policy_topic,
            )
            .await?;
            (replies, Some(subs))
        }
    };
    let router = Router {
        replies,
        jobs,
        capacity,
        inbox: Arc::clone(&inbox),
        policy_topic: config.policy_topic,
        metrics: Arc::clone(&metrics),
        prefix: config.topic_prefix.clone(),
        cluster: config.cluster_id.clone(),
        node: config.node_id.clone(),
        broker: config.broker.url.clone(),
        limiter: Mutex::new(ratelimit::LoginLimiter::new(config.login_limit)),
    };
    let stop = || {
        log::info!("ekattest-server stopping");
        inbox.stop();
        sweep_task.abort();
        if let Some(t) = &hangup_task {
            t.abort();
        }
        if let Some(t) = &metrics_task {
            t.abort();
        }
    };
    let (client, eventloop) = match (link, nats_subs) {
        (Link::Mqtt(client, eventloop), _) => (client, *eventloop),
        (Link::Nats(client), subs) => {
            if let Some(subs) = subs {
                nats::drive(router, subs).await;
            }
            stop();
            let join = tokio::task::spawn_blocking(move || {
                for w in workers {
                    let _ = w.join();
                }
                let _ = reload_thread.join();
            });
            nats::finish(&client, join).await;
            stop_registry(registry.as_ref());
            log::info!("ekattest-server stopped");
            return Ok(());
        }
    };
    let eventloop = drive(router, client.clone(), eventloop).await;
    stop();
    // The router (and with it the job sender) is gone: workers finish the queue and exit.
    // Keep polling meanwhile, so a worker waiting on a full client queue can finish.
    let mut eventloop = eventloop;
    let join = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
        let _ = reload_thread.join();
    });
    tokio::pin!(join);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT * 3, async {
        loop {
            tokio::select! {
                _ = &mut join => return,
                event = eventloop.poll() => if event.is_err() {
                    tokio::time::sleep(RECONNECT_MIN).await;
                }
            }
        }
    })
    .await;
    drain(&client, eventloop).await;
    stop_registry(registry.as_ref());
    log::info!("ekattest-server stopped");
    Ok(())
}

/// Writes what the registry has queued (the workers are done) and ends its writer.
fn stop_registry(registry: Option<&Registry>) {
    if let Some(r) = registry {
        r.writer.stop(DRAIN_TIMEOUT);
    }
}

type Workers = (SyncSender<Job>, Vec<JoinHandle<()>>);

fn start_workers(
    handler: &Arc<Handler>,
    n: usize,
    capacity: usize,
) -> Result<Workers, DaemonError> {
    let (tx, rx) = sync_channel::<Job>(capacity);
    let rx = Arc::new(Mutex::new(rx));
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let (rx, handler) = (Arc::clone(&rx), Arc::clone(handler));
        let t = std::thread::Builder::new()
            .name(format!("ekattest-worker-{i}"))
            .spawn(move || work(&rx, &handler))
            .map_err(DaemonError::Runtime)?;
        threads.push(t);
    }
    Ok((tx, threads))
}

fn work(rx: &Mutex<Receiver<Job>>, handler: &Handler) {
    loop {
        // The lock is held only while waiting for the next job.
        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => handler.handle(job),
            Err(_) => return,
        }
    }
}

async fn sweep(handler: Arc<Handler>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let attestor = &handler.attestor;
        let dropped = attestor.sweep(std::time::Instant::now());
        handler.metrics.set_sessions_active(attestor.pending());
        if dropped > 0 {
            log::debug!(sessions = dropped; "expired challenge sessions dropped");
        }
    }
}

/// SIGHUP: the reload thread re-reads the policy files at once (the other keys of the config
/// file need a restart). The handler is registered before this returns, so a SIGHUP after
/// the start-up line never kills the server.
fn reload_on_hangup(inbox: &Arc<Inbox>) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            log::warn!(error:% = e; "cannot handle SIGHUP; it will stop the server");
            return None;
        }
    };
    let inbox = Arc::clone(inbox);
    Some(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            log::info!("SIGHUP received: reloading the policy files");
            inbox.rescan();
        }
    }))
}
