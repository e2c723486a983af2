//! One load thread: many simulated devices behind ONE MQTT connection at a time (rumqttc
//! sync client, clean session, [`super::link`]). Each device publishes its Login (with a
//! fresh nonce, and the hint of the run's signer so Challenges leave its certificate out)
//! and keeps the Login transcript `T` over the exact frame it published; it answers its
//! Challenge, when the Challenge names its `T`, with the software ActivateCredential
//! (delayed by `--slow-tpm`), the MAC over `T` and an SVID-key proof of possession, and
//! checks its Result. The server's signatures are checked on a sample, as the agent checks
//! them all: the Challenge's (signer chained to the trust bundle, over this agent's
//! Challenge) and the Result's (over this session and `T`; one signed for another Login is
//! ignored, as the agent ignores it). A device whose Challenge or Result does not come
//! within the attempt timeout, or that hears "server busy", logs in again.
//!
//! Devices that share a pool EK take turns ([`KeyPool::try_lease`]): the server keeps one
//! session per EK, so a second device logging in with the same EK would replace the first's
//! session. A device waits until its key is free before its first Login.
//!
//! Recovery from injected faults ([`crate::faults`]): when the connection fails (broker
//! restart, NATS node killed) or the broker refuses a subscription, the thread connects to
//! the next broker of its list (its own node first, then the others in turn; with one
//! broker, that one again), subscribes again and, once the SUBACKs granted everything,
//! logs in every device in flight; no Login goes out meanwhile. A lost message (dropped,
//! or sent to a killed server) is recovered by the attempt timeout; with `--corrupt` every
//! Result signature is checked, and a frame that does not decode, a credential that does
//! not activate, a signature that does not verify or any rejection (a corrupted Login or
//! Answer) starts a new attempt at once, up to the attempt limit. A second Accepted for a
//! device that already has its identity is counted as a duplicate.
//!
//! The connection handling lives in `connection` (brokers, failover, subscriptions), the
//! handling of what the servers send in `downlink`.
//!
//! The MQTT event loop runs on its own thread and hands inbound publishes to the device
//! thread over a channel, so publishing never waits on itself; a publish that fails because
//! the connection just died is counted and left to the recovery above. This module never panics on
//! any frame the broker delivers and never keeps more than `window` devices in flight.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::SystemTime;
use std::time::{Duration, Instant};

use super::keys::KeyPool;
use super::link::{Inbound as Net, Link};
use crate::faults::DeviceRecord;

mod connection;
mod downlink;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use ekattest_agent::daemon::identity::{Signer, SvidKey, TrustBundle};
use ekattest_protocol::limits::{NONCE_LEN, SIGNER_HINT_LEN};
use ekattest_protocol::msg::{Login, Method, SessionId, Uplink};
use ekattest_protocol::sign::{self, Transcript};
use ekattest_protocol::topic::Topics;
use ekattest_protocol::{encode, heapless, limits};

use crate::error::{Error, Result};

/// Down-topic filters per SUBSCRIBE packet (about 60 bytes each, under [`PACKET_MAX`]).
const FILTERS_PER_SUBSCRIBE: usize = 200;
/// Attempts per device before it counts as an error.
const MAX_ATTEMPTS: u32 = 20;

/// How a thread subscribes to its devices' down topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe {
    /// One filter per device (`.../agents/{agent}/down`), sent in batches.
    PerDevice,
    /// One wildcard filter (`.../agents/+/down`): every thread receives every device's
    /// downlinks and drops the others'.
    Wildcard,
}

/// Everything one thread needs.
pub(crate) struct WorkerSpec {
    pub(crate) index: usize,
    /// Brokers (`host`, `port`), its own first; on a failed connection the next is tried.
    pub(crate) brokers: Vec<(String, u16)>,
    /// The NATS node of `brokers[0]`, when the harness runs a NATS cluster (device
    /// records carry it for the node-kill tally).
    pub(crate) node: Option<usize>,
    pub(crate) run: String,
    pub(crate) prefix: String,
    pub(crate) cluster: String,
    /// Global device numbers this thread simulates (their pool keys come from `keys`).
    pub(crate) devices: Vec<usize>,
    pub(crate) keys: Arc<KeyPool>,
    pub(crate) window: usize,
    /// Logins per second for this thread (`None`: as fast as the window allows).
    pub(crate) rate: Option<f64>,
    pub(crate) timeout: Duration,
    pub(crate) verify_every: usize,
    /// The server signer's public point (uncompressed), for Result signatures.
    pub(crate) signer_point: Arc<Vec<u8>>,
    /// The server's signer, checked against the trust bundle: what a Challenge that leaves
    /// its certificate out (the Login's hint named it) is checked with.
    pub(crate) signer: Arc<Signer>,
    /// The devices' trust bundle (the SVID root), for a Challenge that carries a signer
    /// certificate.
    pub(crate) bundle: Arc<TrustBundle>,
    pub(crate) subscribe: Subscribe,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) done: Arc<AtomicUsize>,
    /// The fault clock ([`crate::faults::Scheduler::started`]): device records are
    /// measured from here.
    pub(crate) t0: Instant,
    /// Payloads may be corrupted in flight (`--corrupt`): check every Result signature and
    /// treat every failure of an attempt as retryable (see the module docs).
    pub(crate) corrupt: bool,
    /// `--slow-tpm`: (delay, jitter) of the simulated ActivateCredential, i.e. of each
    /// Answer after its Challenge.
    pub(crate) slow_tpm: Option<(Duration, Duration)>,
    /// `--fault-seed`, for the jitter.
    pub(crate) seed: u64,
}

/// What one thread saw.
#[derive(Debug, Default)]
pub(crate) struct WorkerResult {
    pub(crate) attested: usize,
    pub(crate) rejected: usize,
    pub(crate) errors: usize,
    pub(crate) retries: usize,
    /// Devices that logged in more than once.
    pub(crate) retried_devices: usize,
    pub(crate) time_to_identity: Vec<Duration>,
    /// MQTT bytes of the attestation messages both ways (PUBLISH + PUBACK).
    pub(crate) wire_bytes: u64,
    pub(crate) signatures_checked: usize,
    /// Challenge signatures checked (signer and signature over this agent's Challenge).
    pub(crate) challenges_checked: usize,
    pub(crate) reasons: BTreeMap<String, usize>,
    pub(crate) reconnects: usize,
    /// Connections moved to another broker of the list after a failure.
    pub(crate) failovers: usize,
    /// Connections closed because the broker refused a subscription.
    pub(crate) refused_subscriptions: usize,
    /// Publishes that failed because the connection was gone (recovered by logging in
    /// again).
    pub(crate) lost_publishes: usize,
    /// `host:port` of the first broker and of the one connected at the end.
    pub(crate) first_broker: String,
    /// `host:port` connected at the end (empty: none).
    pub(crate) last_broker: String,
    /// Devices of this thread not finished at the end.
    pub(crate) unfinished: usize,
    /// Accepted Results for devices already attested (identities issued twice).
    pub(crate) duplicates: usize,
    /// Why the last failed connection failed (empty: none failed).
    pub(crate) last_lost: String,
    /// Attempts that failed on a damaged frame or rejection and were retried at once
    /// (`--corrupt` only).
    pub(crate) corrupt_retries: usize,
    /// One record per device that started, for the fault report.
    pub(crate) records: Vec<DeviceRecord>,
    /// The pool keys ([`KeyPool::key_id`]) of the attested devices: the distinct EKs
    /// attested, which the registry's record count is checked against.
    pub(crate) attested_keys: BTreeSet<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    WaitChallenge,
    WaitResult,
    Done,
}

struct Dev {
    state: State,
    attempts: u32,
    started: Option<Instant>,
    finished: Option<Instant>,
    attested: bool,
    session: Option<SessionId>,
    /// Its pool key ([`KeyPool::key_id`]).
    key: usize,
    /// It holds its key's lease (from its first Login until it finishes).
    leased: bool,
    /// The transcript of the current attempt's Login.
    transcript: Option<Transcript>,
    /// The transcripts of its earlier attempts: a Challenge naming one is stale.
    earlier: Vec<Transcript>,
}

/// The frame of an uplink message.
fn encode_frame(msg: &Uplink) -> Result<Vec<u8>> {
    let mut buf = [0u8; limits::UPLINK_FRAME_MAX];
    encode(msg, &mut buf)
        .map(<[u8]>::to_vec)
        .map_err(|e| Error::Device(format!("encode {}: {e}", msg.kind())))
}

/// MQTT bytes of one QoS 1 PUBLISH of `payload` on `topic` plus its 4-byte PUBACK.
pub(crate) fn publish_wire_bytes(topic: usize, payload: usize) -> u64 {
    let remaining = 2 + topic + 2 + payload;
    let varint = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    (1 + varint + remaining + 4) as u64
}

/// Runs one thread's devices to completion (or until `stop`).
pub(crate) fn run(spec: WorkerSpec) -> Result<WorkerResult> {
    if spec.brokers.is_empty() {
        return Err(Error::Device("no broker to connect to".into()));
    }
    let (tx, rx) = mpsc::channel::<(u64, Net)>();
    let mut sim = Sim::new(&spec, tx)?;
    sim.open(0)?;
    let outcome = sim.drive(&rx);
    let result = sim.into_result();
    drop(rx);
    outcome.map(|()| result)
}

struct Sim<'a> {
    spec: &'a WorkerSpec,
    /// The current connection (`None` between a failure and the next attempt).
    link: Option<Link>,
    /// Where the event-loop threads send their events.
    tx: mpsc::Sender<(u64, Net)>,
    /// Generations handed out so far.
    generation: u64,
    /// When to open the next connection, after a failure.
    reopen_at: Option<(Instant, usize)>,
    client_id: String,
    /// Answers waiting for their simulated TPM (`--slow-tpm`): (due, device, attempt,
    /// topic, frame); at most one per device in flight, so at most `window`.
    delayed: Vec<(Instant, usize, u32, String, Vec<u8>)>,
    tpm_rng: crate::faults::rng::Rng,
    topics: Topics<'a>,
    devs: Vec<Dev>,
    svid_key: SvidKey,
    svid_spki: heapless::Vec<u8, { limits::SVID_KEY_MAX }>,
    signer_hint: [u8; SIGNER_HINT_LEN],
    rng: SystemRandom,
    /// (deadline, local device, attempt).
    deadlines: VecDeque<(Instant, usize, u32)>,
    /// Devices not started yet, in order.
    pending: VecDeque<usize>,
    /// Devices waiting for their key (held by another device), per key id, in order.
    blocked: BTreeMap<usize, VecDeque<usize>>,
    /// [`KeyPool::releases`] when `blocked` was last looked through.
    seen_releases: u64,
    in_flight: usize,
    finished: usize,
    accepted_seen: usize,
    challenges_seen: usize,
    tokens: f64,
    last_refill: Instant,
    connected_once: bool,
    agent_prefix: String,
    result: WorkerResult,
}

impl<'a> Sim<'a> {
    fn new(spec: &'a WorkerSpec, tx: mpsc::Sender<(u64, Net)>) -> Result<Self> {
        let topics = Topics::new(&spec.prefix, &spec.cluster)
            .map_err(|e| Error::Device(format!("topic prefix or cluster: {e}")))?;
        let svid_key = SvidKey::generate()
            .map_err(|e| Error::Device(format!("cannot generate the SVID key: {e}")))?;
        let spki = svid_key
            .spki_der()
            .map_err(|e| Error::Device(format!("SVID key SPKI: {e}")))?;
        let svid_spki = heapless::Vec::from_slice(&spki)
            .map_err(|_| Error::Device("SVID key SPKI too long".into()))?;
        let devs = spec
            .devices
            .iter()
            .map(|&n| Dev {
                state: State::Idle,
                attempts: 0,
                started: None,
                finished: None,
                attested: false,
                session: None,
                key: spec.keys.key_id(n),
                leased: false,
                transcript: None,
                earlier: Vec::new(),
            })
            .collect();
        Ok(Self {
            spec,
            link: None,
            tx,
            generation: 0,
            reopen_at: None,
            client_id: format!("load-{}-{}", spec.run, spec.index),
            delayed: Vec::new(),
            tpm_rng: crate::faults::rng::Rng::derive(spec.seed, spec.index as u64),
            topics,
            devs,
            svid_key,
            svid_spki,
            signer_hint: spec.signer.hint(),
            rng: SystemRandom::new(),
            deadlines: VecDeque::new(),
            pending: (0..spec.devices.len()).collect(),
            blocked: BTreeMap::new(),
            seen_releases: 0,
            in_flight: 0,
            finished: 0,
            accepted_seen: 0,
            challenges_seen: 0,
            tokens: 1.0,
            last_refill: Instant::now(),
            connected_once: false,
            agent_prefix: format!("{}-{}-", spec.run, spec.index),
            result: WorkerResult {
                first_broker: spec
                    .brokers
                    .first()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .unwrap_or_default(),
                ..WorkerResult::default()
            },
        })
    }

    /// The result with one [`DeviceRecord`] per device; one that never started (the run
    /// ended first) is recorded as starting at the end, unfinished.
    fn into_result(mut self) -> WorkerResult {
        let t0 = self.spec.t0;
        let end = Instant::now();
        let node = self.spec.node;
        self.result.records = self
            .devs
            .iter()
            .map(|d| DeviceRecord {
                started: d.started.unwrap_or(end).saturating_duration_since(t0),
                finished: d.finished.map(|f| f.saturating_duration_since(t0)),
                attempts: d.attempts,
                attested: d.attested,
                node,
            })
            .collect();
        self.result.attested_keys = self
            .devs
            .iter()
            .filter(|d| d.attested)
            .map(|d| d.key)
            .collect();
        self.result.unfinished = self.devs.len().saturating_sub(self.finished);
        if let Some(mut l) = self.link.take() {
            if let Some((host, port)) = self.spec.brokers.get(l.broker) {
                self.result.last_broker = format!("{host}:{port}");
            }
            l.close();
        }
        self.result
    }

    fn agent(&self, local: usize) -> String {
        format!("{}{local}", self.agent_prefix)
    }

    fn drive(&mut self, rx: &mpsc::Receiver<(u64, Net)>) -> Result<()> {
        // Wait for the first CONNACK (from any broker of the list); logins go out once
        // the broker granted every subscription (its SUBACKs).
        let start = Instant::now();
        while !self.connected_once {
            if self.spec.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(msg) => self.on_inbound(msg)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Device(
                        "the MQTT thread ended before connecting".into(),
                    ));
                }
            }
            self.reopen()?;
            if start.elapsed() > Duration::from_secs(30) {
                return Err(Error::Device(format!(
                    "no CONNACK from any of the brokers {:?} within 30 s",
                    self.spec.brokers
                )));
            }
        }
        while self.finished < self.devs.len() && !self.spec.stop.load(Ordering::Relaxed) {
            if self.connected() {
                self.start_logins()?;
            }
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(msg) => self.on_inbound(msg)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Device("the MQTT thread ended".into()));
                }
            }
            while let Ok(msg) = rx.try_recv() {
                self.on_inbound(msg)?;
            }
            self.reopen()?;
            // Without a connection nothing can be sent: the reconnect logs in again
            // whatever is in flight.
            if self.connected() {
                self.send_due_answers();
                self.expire()?;
            }
        }
        Ok(())
    }

    fn down_topic(&self, local: usize) -> Result<String> {
        self.topics
            .down(&self.agent(local))
            .map(|t| t.as_str().to_owned())
            .map_err(|e| Error::Device(format!("down topic: {e}")))
    }

    fn start_logins(&mut self) -> Result<()> {
        if let Some(rate) = self.spec.rate {
            let now = Instant::now();
            let dt = now.duration_since(self.last_refill).as_secs_f64();
            self.last_refill = now;
            self.tokens = (self.tokens + dt * rate).min(rate.max(1.0));
        }
        while self.in_flight < self.spec.window {
            if self.spec.rate.is_some() && self.tokens < 1.0 {
                break;
            }
            let Some(i) = self.next_ready() else {
                break;
            };
            if self.spec.rate.is_some() {
                self.tokens -= 1.0;
            }
            self.in_flight += 1;
            self.devs[i].started = Some(Instant::now());
            self.login(i)?;
        }
        Ok(())
    }

    /// The next device to start, its key leased: one that waited for its key (if a key was
    /// released since the last look), else the next not started whose key is free (the
    /// others wait for theirs).
    fn next_ready(&mut self) -> Option<usize> {
        let keys = &self.spec.keys;
        let released = keys.releases();
        if released != self.seen_releases && !self.blocked.is_empty() {
            let free = self.blocked.keys().copied().find(|&k| keys.try_lease(k));
            match free {
                Some(k) => {
                    let queue = self.blocked.get_mut(&k)?;
                    let i = queue.pop_front();
                    if queue.is_empty() {
                        self.blocked.remove(&k);
                    }
                    if let Some(i) = i {
                        self.devs[i].leased = true;
                        return Some(i);
                    }
                    keys.release(k);
                }
                // Nothing free: look again after the next release.
                None => self.seen_releases = released,
            }
        }
        while let Some(i) = self.pending.pop_front() {
            let key = self.devs[i].key;
            if self.blocked.contains_key(&key) || !keys.try_lease(key) {
                self.blocked.entry(key).or_default().push_back(i);
                continue;
            }
            self.devs[i].leased = true;
            return Some(i);
        }
        None
    }

    /// Publishes device `i`'s Login (a new attempt) and arms its timeout.
    fn login(&mut self, i: usize) -> Result<()> {
        let agent = self.agent(i);
        if self.devs[i].attempts >= MAX_ATTEMPTS {
            return self.finish_error(i, "no Result after the maximum number of attempts");
        }
        let dev = &mut self.devs[i];
        if dev.attempts > 0 {
            self.result.retries += 1;
            if dev.attempts == 1 {
                self.result.retried_devices += 1;
            }
        }
        dev.attempts += 1;
        dev.state = State::WaitChallenge;
        dev.session = None;
        let attempt = dev.attempts;
        let key = self.spec.keys.key(dev.key);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| Error::Device("no random bytes for the Login nonce".into()))?;
        let login = Uplink::Login(Login {
            methods: heapless::Vec::from_slice(&[Method::TpmEk])
                .map_err(|_| Error::Device("methods".into()))?,
            ek_public: heapless::Vec::from_slice(key.ek.tpm2b_public())
                .map_err(|_| Error::Device("EK public area too long".into()))?,
            ek_cert: None,
            ek_chain: heapless::Vec::new(),
            ak_public: heapless::Vec::from_slice(key.ak.tpm2b_public())
                .map_err(|_| Error::Device("AK public area too long".into()))?,
            svid_key: Some(self.svid_spki.clone()),
            key_certify: None,
            nonce,
            signer_hint: Some(self.signer_hint),
        });
        let topic = self
            .topics
            .login(&agent)
            .map_err(|e| Error::Device(format!("login topic: {e}")))?;
        let frame = encode_frame(&login)?;
        // T over the exact frame published: the server computes it over what it receives.
        let transcript = sign::transcript(&self.spec.cluster, &agent, &frame)
            .map_err(|e| Error::Device(format!("Login transcript: {e}")))?;
        let dev = &mut self.devs[i];
        if let Some(old) = dev.transcript.replace(transcript) {
            dev.earlier.push(old);
        }
        self.publish_frame(topic.as_str(), frame);
        self.deadlines
            .push_back((Instant::now() + self.spec.timeout, i, attempt));
        Ok(())
    }

    fn publish(&mut self, topic: &str, msg: &Uplink) -> Result<()> {
        let frame = encode_frame(msg)?;
        self.publish_frame(topic, frame);
        Ok(())
    }

    fn publish_frame(&mut self, topic: &str, frame: Vec<u8>) {
        self.result.wire_bytes += publish_wire_bytes(topic.len(), frame.len());
        let sent = self
            .link
            .as_ref()
            .is_some_and(|l| l.publish(topic, frame).is_ok());
        if !sent {
            // The connection is gone: the reconnect logs this device in again.
            self.result.lost_publishes += 1;
        }
    }

    fn expire(&mut self) -> Result<()> {
        let now = Instant::now();
        while let Some(&(deadline, i, attempt)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let dev = &self.devs[i];
            if dev.attempts == attempt
                && matches!(dev.state, State::WaitChallenge | State::WaitResult)
            {
                self.login(i)?;
            }
        }
        Ok(())
    }

    fn local_device(&self, agent: &str) -> Option<usize> {
        let i: usize = agent.strip_prefix(&self.agent_prefix)?.parse().ok()?;
        (i < self.devs.len()).then_some(i)
    }

    fn finish(&mut self, i: usize) {
        let dev = &mut self.devs[i];
        if dev.state != State::Done {
            dev.state = State::Done;
            dev.session = None;
            dev.transcript = None;
            dev.earlier = Vec::new();
            if dev.leased {
                dev.leased = false;
                self.spec.keys.release(dev.key);
            }
            dev.finished = Some(Instant::now());
            self.in_flight = self.in_flight.saturating_sub(1);
            self.finished += 1;
            self.spec.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An attempt that ended on a damaged frame: with `--corrupt` (and while the device
    /// waits) a new attempt starts at once, otherwise the device ends in error.
    fn failed_attempt(&mut self, i: usize, why: &str) -> Result<()> {
        if !self.spec.corrupt {
            return self.finish_error(i, why);
        }
        if !matches!(self.devs[i].state, State::WaitChallenge | State::WaitResult) {
            return Ok(()); // a stale frame for a device that is done
        }
        *self.result.reasons.entry(why.to_owned()).or_default() += 1;
        self.result.corrupt_retries += 1;
        self.login(i)
    }

    fn finish_error(&mut self, i: usize, why: &str) -> Result<()> {
        *self.result.reasons.entry(why.to_owned()).or_default() += 1;
        if self.devs[i].state != State::Done {
            self.result.errors += 1;
        }
        self.finish(i);
        Ok(())
    }
}

/// Now, in Unix seconds (for certificate validity).
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
