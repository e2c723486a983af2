//! `ekattest-agent run`: the attestation daemon.
//!
//! One thread drives the MQTT session ([`mqtt::Session`], synchronous, no runtime) as a
//! state machine:
//!
//! 1. At start, read the TPM identity once (EK, NV chain, AK public); the agent id (also the
//!    MQTT client id) is `agent-id` or `ek-` + 32 hex digits of the EK's public_hash.
//! 2. Connect (clean session), subscribe QoS 1 to `{p}/{cluster}/agents/{agent}/down`, wait
//!    for the SubAck (a refusal names the topic: usually the broker ACL).
//! 3. Login with a fresh P-256 SVID key; on the Challenge, ActivateCredential (the TPM is
//!    opened only for that) and Answer with the proof of possession to the challenge's node;
//!    on the Result, verify it ([`identity::verify_result`]) and write the identity files; a
//!    Result that does not verify is logged and ignored (the server's own may still come).
//! 4. Stay connected; log in again when `renew-before` of the SVID lifetime remains, after a
//!    rejection (with backoff), or when no Challenge / verified Result comes
//!    within `response-timeout`. A lost connection is re-established with jittered
//!    exponential backoff ([`backoff`]) and the subscription renewed.
//! 5. With a `broker` list ([`config`]), every connection that fails or is lost (refused,
//!    unreachable, dropped, no SUBACK) moves the agent to the next URL of the list, in turn,
//!    after the same backoff; each connection logs (info) which broker it reached. A
//!    session's Challenge names its server node, not the broker, so an attestation in
//!    flight simply starts again on the next broker.
//!
//! [`Control`] carries the signals: `stop` (SIGTERM/SIGINT) ends the run between steps,
//! `reload` (SIGHUP) ends the current connection, re-reads the configuration through the
//! caller's closure (an invalid file is logged and the previous configuration kept) and
//! attests again at once; counters carry over.
//!
//! `--once` attests, writes the files and returns; it retries broker failures and timeouts
//! until its overall timeout and fails at once on a rejection, with the server's message,
//! and on a broker's refusal (credentials, ACL) once every broker of the list has refused
//! in a row (with one broker: at once).
//! Frames that are not Downlinks, are larger than a Downlink, or arrive when not expected,
//! are logged (a flood only sparsely) and ignored; no
//! input from the broker can crash the loop or make it write anything unverified.

pub mod backoff;
pub mod config;
mod handlers;
pub mod identity;
pub mod metrics;
pub mod mqtt;
pub mod x509;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ekattest_protocol::limits::{DOWNLINK_FRAME_MAX, FRAME_MAX};
use ekattest_protocol::msg::{SessionId, Uplink};
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::topic::{Topics, default_agent_id};
use ekattest_protocol::{ErrorChain, encode};

use crate::attest;
use crate::ops;
use crate::tpm::ak::{self, Ak, AkOptions};
use crate::tpm::ek::{self, Ek};
use backoff::Backoff;
use config::Config;
use config::SvidKeyKind;
use identity::{HeldKey, Signer, SvidKey, TrustBundle};
use metrics::{Metrics, Textfile};

/// How `run` behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Attest once and return (`--once`).
    pub once: bool,
    /// Overall limit of a `--once` run (`--timeout`, default 5 min).
    pub timeout: Duration,
}

/// What tells a running daemon to stop or reload; `main`'s signal thread sets the flags and
/// the daemon checks them between steps (no signal handler runs).
#[derive(Debug, Default)]
pub struct Control {
    /// SIGTERM / SIGINT: stop.
    pub stop: AtomicBool,
    /// SIGHUP: re-read the configuration and attest again now.
    pub reload: AtomicBool,
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `--once`: the identity files are written.
    Attested,
    /// Stopped by [`Control::stop`] (before the identity was written, with `--once`).
    Stopped,
}

/// Why the daemon stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The TPM identity could not be read.
    #[error("cannot read the TPM identity from {spec}: {reason}")]
    Tpm {
        /// The TPM spec.
        spec: String,
        /// The error chain.
        reason: String,
    },
    /// The trust bundle or an identity operation failed.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The MQTT client could not be set up.
    #[error(transparent)]
    Mqtt(#[from] mqtt::MqttError),
    /// The topic prefix, cluster or agent id cannot form a topic.
    #[error("cannot build MQTT topics: {0}")]
    Topic(#[from] ekattest_protocol::topic::TopicError),
    /// A message could not be encoded (not expected).
    #[error("cannot encode a {0} frame")]
    Encode(&'static str),
    /// The server rejected the attestation (`--once`).
    #[error("attestation rejected by the server: {0}")]
    Rejected(String),
    /// The broker refused the connection or the subscription (`--once`).
    #[error("{0}")]
    Broker(String),
    /// `--once` did not finish in time.
    #[error("no attestation within {timeout:?}; last problem: {last}")]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// What failed last.
        last: String,
    },
}

/// Where an attestation stands on the current connection.
enum Phase {
    /// Nothing in flight; the next Login is due at `Runner::next_login`.
    Idle,
    /// Login sent; `transcript` is its transcript.
    AwaitChallenge {
        key: HeldKey,
        spki: Vec<u8>,
        transcript: Transcript,
        deadline: Instant,
    },
    /// Answer sent to the Challenge `signer` signed.
    AwaitResult {
        key: HeldKey,
        spki: Vec<u8>,
        transcript: Transcript,
        signer: Box<Signer>,
        session: SessionId,
        deadline: Instant,
    },
}

impl Phase {
    fn awaited(&self) -> &'static str {
        match self {
            Self::Idle => "message",
            Self::AwaitChallenge { .. } => "Challenge",
            Self::AwaitResult { .. } => "Result",
        }
    }

    fn waiting_for(&self) -> &'static str {
        match self {
            Self::Idle => "nothing",
            Self::AwaitChallenge { .. } => "a Challenge",
            Self::AwaitResult { .. } => "a Result",
        }
    }
}

/// How one connection ended.
enum End {
    /// `--once` succeeded.
    Done,
    /// SIGTERM / SIGINT.
    Stopped,
    /// SIGHUP: re-read the configuration, attest again.
    Reload,
    /// Network trouble: reconnect after backoff.
    Transient(String),
    /// The broker refused us (credentials, ACL): fatal with `--once`, else retried.
    Refused(String),
    /// Stop with this error.
    Fatal(DaemonError),
}

impl From<DaemonError> for End {
    fn from(e: DaemonError) -> Self {
        Self::Fatal(e)
    }
}

/// The TPM identity read at start.
struct Device {
    ek: Ek,
    chain: Vec<Vec<u8>>,
    ak: Ak,
    ak_opts: AkOptions,
}

fn read_device(config: &Config) -> Result<Device, DaemonError> {
    let fail = |e: &dyn std::error::Error| DaemonError::Tpm {
        spec: config.tpm.to_string(),
        reason: ErrorChain(e).to_string(),
    };
    let mut tpm = ops::open(&config.tpm).map_err(|e| fail(&e))?;
    let endorsement = ek::discover(&mut tpm).map_err(|e| fail(&e))?;
    let ek = endorsement.pick(config.ek).map_err(|e| fail(&e))?.clone();
    let ak_opts = AkOptions {
        parameter_encryption: config.parameter_encryption,
        ..AkOptions::default()
    };
    if !ak_opts.parameter_encryption {
        log::warn!(
            "parameter-encryption is off: the activated secret crosses the TPM bus in clear"
        );
    }
    let ak = ak::read(&mut tpm, &ak_opts).map_err(|e| fail(&e))?;
    Ok(Device {
        ek,
        chain: endorsement.chain,
        ak,
        ak_opts,
    })
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Runs the daemon (or one attestation with `opts.once`) until `control.stop` is set. On
/// `control.reload` it calls `reload` for a new configuration (keeping `config` when that
/// fails, logged) and attests again at once.
///
/// # Errors
/// [`DaemonError`]: at start (TPM, trust bundle, TLS files); with `--once`, a rejection, a
/// broker refusal or the timeout.
pub fn run(
    config: Config,
    opts: &RunOptions,
    control: &Control,
    reload: &dyn Fn() -> Result<Config, String>,
) -> Result<Exit, DaemonError> {
    let started = Instant::now();
    let mut config = config;
    let mut metrics = Metrics::default();
    loop {
        if let Some(exit) = run_with(&config, opts, control, started, &mut metrics)? {
            return Ok(exit);
        }
        match reload() {
            Ok(new) => {
                log::info!("SIGHUP: configuration re-read; attesting again now");
                config = new;
            }
            Err(e) => log::error!(
                "SIGHUP: the configuration is invalid, keeping the previous one: {e}; \
                 attesting again now"
            ),
        }
    }
}

/// One configuration's run: `Ok(None)` when SIGHUP asks for a reload.
fn run_with(
    config: &Config,
    opts: &RunOptions,
    control: &Control,
    started: Instant,
    metrics: &mut Metrics,
) -> Result<Option<Exit>, DaemonError> {
    let bundle = TrustBundle::load(&config.trust_bundle)?;
    let device = read_device(config)?;
    let agent = match &config.agent_id {
        Some(id) => id.clone(),
        None => default_agent_id(&device.ek.public_hash).to_string(),
    };
    let topics = Topics::new(&config.topic_prefix, &config.cluster_id)?;
    let login_topic = topics.login(&agent)?.to_string();
    let down_topic = topics.down(&agent)?.to_string();
    let brokers: Vec<String> = config.brokers().map(config::Broker::url).collect();
    log::info!(
        "agent {agent}: {} EK, public_hash {}, broker {}, svid-key {}",
        device.ek.kind.as_str(),
        hex::encode(device.ek.public_hash),
        brokers.join(", then "),
        config.svid_key.as_str()
    );
    let signer = identity::held_signer(&config.data_dir, &bundle, unix_now());
    if let Some(s) = &signer {
        log::debug!(
            "holding the server's signer from {} (hint {})",
            config.data_dir.join(identity::SVID_PEM).display(),
            hex::encode(s.hint())
        );
    }
    let mut runner = Runner {
        config,
        opts,
        control,
        deadline: opts.once.then(|| started + opts.timeout),
        device,
        agent,
        topics,
        login_topic,
        down_topic,
        bundle,
        signer,
        connect_backoff: Backoff::new(config.retry.initial, config.retry.max),
        login_backoff: Backoff::new(config.retry.initial, config.retry.max),
        metrics: std::mem::take(metrics),
        textfile: Textfile(config.metrics_textfile.clone()),
        next_login: Instant::now(),
        last_problem: String::from("none"),
        ignored: 0,
        broker: 0,
        refused_in_a_row: 0,
        attempt_counted: false,
    };
    let result = runner.run();
    *metrics = std::mem::take(&mut runner.metrics);
    result
}

struct Runner<'a> {
    config: &'a Config,
    opts: &'a RunOptions,
    control: &'a Control,
    deadline: Option<Instant>,
    device: Device,
    agent: String,
    topics: Topics<'a>,
    login_topic: String,
    down_topic: String,
    bundle: TrustBundle,
    /// The signer of the last Challenge that verified (its hint goes in the next Login).
    signer: Option<Signer>,
    connect_backoff: Backoff,
    login_backoff: Backoff,
    metrics: Metrics,
    textfile: Textfile,
    next_login: Instant,
    last_problem: String,
    /// Messages ignored since start (throttles their log lines).
    ignored: u64,
    /// Index of the broker in `config.brokers()` the next connection goes to.
    broker: usize,
    /// Brokers that refused us one after the other (reset by a connection that works).
    refused_in_a_row: usize,
    /// Whether the attempt in flight is already counted as failed ([`Runner::count_failure`]).
    attempt_counted: bool,
}

impl<'a> Runner<'a> {
    fn run(&mut self) -> Result<Option<Exit>, DaemonError> {
        loop {
            if self.control.stop.load(Ordering::Relaxed) {
                return Ok(Some(Exit::Stopped));
            }
            if self.control.reload.swap(false, Ordering::Relaxed) {
                return Ok(None);
            }
            self.check_deadline()?;
            let brokers = self.config.brokers().count();
            match self.connection() {
                End::Done => return Ok(Some(Exit::Attested)),
                End::Stopped => return Ok(Some(Exit::Stopped)),
                End::Reload => return Ok(None),
                End::Fatal(e) => return Err(e),
                End::Refused(why) if self.opts.once && self.refused_in_a_row + 1 >= brokers => {
                    return Err(DaemonError::Broker(why));
                }
                End::Refused(why) => {
                    log::error!("{why}");
                    self.refused_in_a_row += 1;
                    self.last_problem = why;
                }
                End::Transient(why) => {
                    log::warn!("{why}");
                    self.refused_in_a_row = 0;
                    self.last_problem = why;
                }
            }
            // The next connection goes to the next broker of the list (the same one when
            // there is only one).
            self.broker = (self.broker + 1) % brokers.max(1);
            let delay = self.connect_backoff.next_delay();
            if brokers > 1 {
                log::info!(
                    "reconnecting to the broker in {delay:?}: {} ({} of {brokers})",
                    self.current_broker().url(),
                    self.broker + 1
                );
            } else {
                log::info!("reconnecting to the broker in {delay:?}");
            }
            // Returns early on a stop or a reload: the loop's top tells which.
            self.sleep(delay);
        }
    }

    fn check_deadline(&self) -> Result<(), DaemonError> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(DaemonError::Timeout {
                timeout: self.opts.timeout,
                last: self.last_problem.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Sleeps up to `d` in small steps, returning early on a stop or a pending reload.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            if self.control.stop.load(Ordering::Relaxed)
                || self.control.reload.load(Ordering::Relaxed)
            {
                return;
            }
            let now = Instant::now();
            if now >= until || self.deadline.is_some_and(|dl| now >= dl) {
                return;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(100)));
        }
    }

    /// The broker the next (or current) connection goes to.
    fn current_broker(&self) -> &'a config::Broker {
        let config: &'a Config = self.config;
        config.brokers().nth(self.broker).unwrap_or(&config.broker)
    }

    /// One broker connection, until it fails, `--once` finishes, or a stop.
    fn connection(&mut self) -> End {
        let broker = self.current_broker();
        let mut session =
            match mqtt::Session::new(self.config, broker, &self.agent, &self.down_topic) {
                Ok(s) => s,
                Err(e) => return End::Fatal(e.into()),
            };
        let end = self.drive(&mut session);
        session.disconnect();
        end
    }

    fn drive(&mut self, session: &mut mqtt::Session) -> End {
        let current = self.current_broker();
        let broker = format!("{}:{}", current.host, current.port);
        let url = current.url();
        let subscribe_deadline = Instant::now() + self.config.response_timeout;
        let mut subscribed = false;
        let mut phase = Phase::Idle;
        loop {
            if self.control.stop.load(Ordering::Relaxed) {
                return End::Stopped;
            }
            if self.control.reload.swap(false, Ordering::Relaxed) {
                return End::Reload;
            }
            if let Err(e) = self.check_deadline() {
                return End::Fatal(e);
            }
            let now = Instant::now();
            let timer = if !subscribed {
                if now >= subscribe_deadline {
                    return End::Transient(format!("no SUBACK from broker {broker}"));
                }
                subscribe_deadline
            } else {
                match &phase {
                    Phase::Idle if now >= self.next_login => match self.login(session) {
                        Ok(p) => {
                            phase = p;
                            continue;
                        }
                        Err(end) => return end,
                    },
                    Phase::Idle => self.next_login,
                    Phase::AwaitChallenge { deadline, .. }
                    | Phase::AwaitResult { deadline, .. }
                        if now >= *deadline =>
                    {
                        let mut why = format!(
                            "no {} from the server within {:?}; logging in again",
                            phase.awaited(),
                            self.config.response_timeout
                        );
                        if self.last_problem.starts_with("not accepting") {
                            why = format!("{why} (last problem: {})", self.last_problem);
                        }
                        log::warn!("{why}");
                        self.failed(why);
                        phase = Phase::Idle;
                        continue;
                    }
                    Phase::AwaitChallenge { deadline, .. }
                    | Phase::AwaitResult { deadline, .. } => *deadline,
                }
            };
            let wait = timer
                .saturating_duration_since(now)
                .clamp(Duration::from_millis(1), Duration::from_millis(250));
            match session.recv(wait) {
                Ok(None) => {}
                Err(mqtt::NetError::Refused(code)) => {
                    return End::Refused(format!(
                        "broker {broker} refused the connection of client id {}: {code} \
                         (check username / password-file and the broker's ACL)",
                        self.agent
                    ));
                }
                Err(e) => {
                    let mut why = format!("connection to broker {broker} failed: {e}");
                    if !subscribed
                        && let Some(hint) = ekattest_protocol::hardening::plaintext_to_tls_hint(
                            url.starts_with("mqtts://"),
                            &why,
                        )
                    {
                        why = format!("{why} ({hint})");
                    }
                    return End::Transient(why);
                }
                Ok(Some(mqtt::Incoming::Connected)) => {
                    log::info!("connected to broker {url} as {}", self.agent);
                }
                Ok(Some(mqtt::Incoming::Subscribed { refused })) => {
                    if refused {
                        return End::Refused(format!(
                            "broker {broker} refused the subscription to {}: check that its ACL \
                             lets client id {} read that topic",
                            self.down_topic, self.agent
                        ));
                    }
                    log::debug!("subscribed to {}", self.down_topic);
                    subscribed = true;
                    self.refused_in_a_row = 0;
                    self.connect_backoff.reset();
                }
                Ok(Some(mqtt::Incoming::Message { topic, payload })) => {
                    if topic != self.down_topic {
                        self.ignored(&format!("ignoring a message on unexpected topic {topic:?}"));
                        continue;
                    }
                    if payload.len() > DOWNLINK_FRAME_MAX {
                        self.ignored(&format!(
                            "ignoring a {}-byte message on {}: larger than the largest \
                             Downlink ({DOWNLINK_FRAME_MAX} bytes)",
                            payload.len(),
                            self.down_topic
                        ));
                        continue;
                    }
                    match self.on_downlink(session, phase, &payload) {
                        Ok(next) => phase = next,
                        Err(end) => return end,
                    }
                }
            }
        }
    }

    fn failed(&mut self, why: String) {
        self.count_failure();
        self.last_problem = why;
        self.next_login = Instant::now() + self.login_backoff.next_delay();
    }

    /// Counts the attempt in flight as failed, once: a refused Result counts at once, and the
    /// response timeout that follows it does not count again.
    fn count_failure(&mut self) {
        if std::mem::replace(&mut self.attempt_counted, true) {
            return;
        }
        self.metrics.record(false);
        self.textfile.publish(&self.metrics);
    }

    fn publish(
        &self,
        session: &mut mqtt::Session,
        topic: &str,
        msg: &Uplink,
    ) -> Result<Vec<u8>, End> {
        let mut buf = vec![0u8; FRAME_MAX];
        let frame =
            encode(msg, &mut buf).map_err(|_| End::Fatal(DaemonError::Encode(msg.kind())))?;
        session
            .publish(topic, frame)
            .map_err(|e| End::Transient(format!("cannot send the {}: {e}", msg.kind())))?;
        Ok(frame.to_vec())
    }

    fn login(&mut self, session: &mut mqtt::Session) -> Result<Phase, End> {
        // A new attempt: not counted yet.
        self.attempt_counted = false;
        let mut nonce = [0u8; ekattest_protocol::limits::NONCE_LEN];
        getrandom::getrandom(&mut nonce).map_err(|e| {
            End::Fatal(DaemonError::Identity(identity::IdentityError::Random(
                e.to_string(),
            )))
        })?;
        let hint = self
            .signer
            .as_ref()
            .map(Signer::hint)
            .or_else(|| self.bundle.default_hint());
        let tpm_failed = |e: &dyn std::error::Error| {
            End::Fatal(DaemonError::Tpm {
                spec: self.config.tpm.to_string(),
                reason: ErrorChain(e).to_string(),
            })
        };
        let d = &self.device;
        let (key, spki, login) = match self.config.svid_key {
            SvidKeyKind::Software => {
                let key = SvidKey::generate().map_err(DaemonError::from)?;
                let spki = key.spki_der().map_err(DaemonError::from)?;
                let login = attest::login(&d.ek, &d.chain, &d.ak, Some(&spki), nonce, hint)
                    .map_err(|e| tpm_failed(&e))?;
                (HeldKey::Software(key), spki, login)
            }
            SvidKeyKind::Tpm => match self.tpm_key_login(nonce, hint) {
                Ok(made) => made,
                Err(why) => {
                    // A TPM that is busy or briefly unreachable: retried like a rejection.
                    let why = format!(
                        "cannot create the TPM SVID key: {why} (verify {} is accessible to \
                         the agent, or set svid-key: software)",
                        self.config.tpm
                    );
                    log::error!("{why}");
                    self.failed(why);
                    return Ok(Phase::Idle);
                }
            },
        };
        log::debug!(
            "Sending Login, attestors: [\"tpm_ek\"], agent: {}, topic: {}",
            self.agent,
            self.login_topic
        );
        let frame = self.publish(session, &self.login_topic, &Uplink::Login(login))?;
        let transcript = sign::transcript(&self.config.cluster_id, &self.agent, &frame)
            .map_err(|_| End::Fatal(DaemonError::Encode("login transcript")))?;
        self.last_problem = format!(
            "no Challenge for the Login published on {} (is a server running for cluster {}, \
             and does the broker ACL let client id {} publish there and read {}?)",
            self.login_topic, self.config.cluster_id, self.agent, self.down_topic
        );
        Ok(Phase::AwaitChallenge {
            key,
            spki,
            transcript,
            deadline: Instant::now() + self.config.response_timeout,
        })
    }

    /// `svid-key: tpm`: creates a key in the TPM, has the AK certify it for this Login's
    /// `nonce`, and builds the Login that carries both.
    fn tpm_key_login(
        &self,
        nonce: [u8; ekattest_protocol::limits::NONCE_LEN],
        hint: Option<[u8; ekattest_protocol::limits::SIGNER_HINT_LEN]>,
    ) -> Result<(HeldKey, Vec<u8>, ekattest_protocol::msg::Login), String> {
        let d = &self.device;
        let qualifying =
            sign::certify_qualifying_data(&self.config.cluster_id, &self.agent, &nonce)
                .map_err(|e| e.to_string())?;
        let mut tpm = ops::open(&self.config.tpm).map_err(|e| ErrorChain(&e).to_string())?;
        let certified = crate::tpm::key::create_certified(&mut tpm, &d.ak_opts, &qualifying)
            .map_err(|e| ErrorChain(&e).to_string())?;
        let spki = certified.key.spki().to_vec();
        let mut login = attest::login(&d.ek, &d.chain, &d.ak, None, nonce, hint)
            .map_err(|e| ErrorChain(&e).to_string())?;
        attest::with_certified_key(&mut login, &certified)
            .map_err(|e| ErrorChain(&e).to_string())?;
        Ok((HeldKey::Tpm(certified.key), spki, login))
    }
}
