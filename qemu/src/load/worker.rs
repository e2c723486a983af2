//! One load thread: many simulated devices behind ONE MQTT connection (rumqttc sync
//! client, clean session). Each device publishes its Login, answers its Challenge with the
//! software ActivateCredential and an SVID-key proof of possession, and checks its Result
//! (the server's signature on a sample). A device whose Challenge or Result does not come
//! within the attempt timeout, or that hears "server busy", logs in again.
//!
//! Recovery from injected faults ([`crate::faults`]): after a reconnect (broker restart)
//! the thread subscribes again and logs in every device in flight; a lost message (dropped,
//! or sent to a killed server) is recovered by the attempt timeout; with `--corrupt` every
//! Result signature is checked, and a frame that does not decode, a credential that does
//! not activate, a signature that does not verify or any rejection (a corrupted Login or
//! Answer) starts a new attempt at once, up to the attempt limit.
//!
//! The MQTT event loop runs on its own thread and hands inbound publishes to the device
//! thread over a channel, so publishing never waits on itself. This module never panics on
//! any frame the broker delivers and never keeps more than `window` devices in flight.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, EcdsaKeyPair, UnparsedPublicKey};
use ekattest_protocol::msg::{
    Answer, Challenge, Downlink, Login, Method, Outcome, SessionId, Uplink,
};
use ekattest_protocol::topic::{Inbound, Topics};
use ekattest_protocol::{RejectCode, decode, encode, heapless, limits, sign};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeFilter};

use super::keys::KeyPool;
use crate::faults::DeviceRecord;

/// Largest MQTT packet either way (the harness broker's `max_packet_size`).
const PACKET_MAX: usize = 16 * 1024;
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
    pub(crate) host: String,
    pub(crate) port: u16,
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
    /// The SVID CA's public point (uncompressed), for Result signatures.
    pub(crate) ca_point: Arc<Vec<u8>>,
    pub(crate) subscribe: Subscribe,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) done: Arc<AtomicUsize>,
    /// The fault clock ([`crate::faults::Scheduler::started`]): device records are
    /// measured from here.
    pub(crate) t0: Instant,
    /// Payloads may be corrupted in flight (`--corrupt`): check every Result signature and
    /// treat every failure of an attempt as retryable (see the module docs).
    pub(crate) corrupt: bool,
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
    pub(crate) reasons: BTreeMap<String, usize>,
    pub(crate) reconnects: usize,
    /// Attempts that failed on a damaged frame or rejection and were retried at once
    /// (`--corrupt` only).
    pub(crate) corrupt_retries: usize,
    /// One record per device that started, for the fault report.
    pub(crate) records: Vec<DeviceRecord>,
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
}

enum Inbound2 {
    Connected,
    Publish(String, Vec<u8>),
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
pub(crate) fn run(spec: WorkerSpec) -> Result<WorkerResult, String> {
    let mut opts = MqttOptions::new(
        format!("load-{}-{}", spec.run, spec.index),
        spec.host.clone(),
        spec.port,
    );
    opts.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(PACKET_MAX, PACKET_MAX)
        .set_request_channel_capacity(4096)
        .set_inflight(u16::try_from(spec.window.clamp(16, 4096) * 2).unwrap_or(u16::MAX));
    let (client, mut connection) = Client::new(opts, 4096);
    let (tx, rx) = mpsc::channel::<Inbound2>();
    let stop_loop = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop_loop);
    let net = thread::Builder::new()
        .name(format!("load-mqtt-{}", spec.index))
        .spawn(move || {
            for event in connection.iter() {
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                let sent = match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        tx.send(Inbound2::Publish(p.topic, p.payload.to_vec()))
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => tx.send(Inbound2::Connected),
                    Ok(_) => Ok(()),
                    Err(_) => {
                        thread::sleep(Duration::from_millis(200));
                        Ok(())
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the MQTT thread: {e}"))?;
    let mut sim = Sim::new(&spec, &client)?;
    let outcome = sim.drive(&rx);
    stop_loop.store(true, Ordering::Relaxed);
    let _ = client.disconnect();
    drop(rx);
    let _ = net.join();
    outcome.map(|()| sim.into_result())
}

struct Sim<'a> {
    spec: &'a WorkerSpec,
    client: &'a Client,
    topics: Topics<'a>,
    devs: Vec<Dev>,
    svid_key: EcdsaKeyPair,
    svid_spki: heapless::Vec<u8, { limits::SVID_KEY_MAX }>,
    rng: SystemRandom,
    /// (deadline, local device, attempt).
    deadlines: VecDeque<(Instant, usize, u32)>,
    next: usize,
    in_flight: usize,
    finished: usize,
    accepted_seen: usize,
    tokens: f64,
    last_refill: Instant,
    connected_once: bool,
    agent_prefix: String,
    result: WorkerResult,
}

impl<'a> Sim<'a> {
    fn new(spec: &'a WorkerSpec, client: &'a Client) -> Result<Self, String> {
        let topics = Topics::new(&spec.prefix, &spec.cluster)
            .map_err(|e| format!("topic prefix or cluster: {e}"))?;
        let svid_key =
            EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING)
                .map_err(|_| "cannot generate the SVID key".to_owned())?;
        let svid_spki =
            super::keys::p256_spki(aws_lc_rs::signature::KeyPair::public_key(&svid_key).as_ref())?;
        let devs = spec
            .devices
            .iter()
            .map(|_| Dev {
                state: State::Idle,
                attempts: 0,
                started: None,
                finished: None,
                attested: false,
                session: None,
            })
            .collect();
        Ok(Self {
            spec,
            client,
            topics,
            devs,
            svid_key,
            svid_spki,
            rng: SystemRandom::new(),
            deadlines: VecDeque::new(),
            next: 0,
            in_flight: 0,
            finished: 0,
            accepted_seen: 0,
            tokens: 1.0,
            last_refill: Instant::now(),
            connected_once: false,
            agent_prefix: format!("{}-{}-", spec.run, spec.index),
            result: WorkerResult::default(),
        })
    }

    /// The result with one [`DeviceRecord`] per device that started.
    fn into_result(mut self) -> WorkerResult {
        let t0 = self.spec.t0;
        self.result.records = self
            .devs
            .iter()
            .filter_map(|d| {
                Some(DeviceRecord {
                    started: d.started?.saturating_duration_since(t0),
                    finished: d.finished.map(|f| f.saturating_duration_since(t0)),
                    attempts: d.attempts,
                    attested: d.attested,
                })
            })
            .collect();
        self.result
    }

    fn agent(&self, local: usize) -> String {
        format!("{}{local}", self.agent_prefix)
    }

    fn drive(&mut self, rx: &mpsc::Receiver<Inbound2>) -> Result<(), String> {
        // Wait for the first CONNACK, then subscribe before any Login goes out (one
        // connection keeps order, so the subscriptions are in place first).
        let start = Instant::now();
        while !self.connected_once {
            if self.spec.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Inbound2::Connected) => self.on_connected()?,
                Ok(Inbound2::Publish(..)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the MQTT thread ended before connecting".into());
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "no CONNACK from the broker {}:{} within 30 s",
                    self.spec.host, self.spec.port
                ));
            }
        }
        while self.finished < self.devs.len() && !self.spec.stop.load(Ordering::Relaxed) {
            self.start_logins()?;
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(msg) => self.on_inbound(msg)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the MQTT thread ended".into());
                }
            }
            while let Ok(msg) = rx.try_recv() {
                self.on_inbound(msg)?;
            }
            self.expire()?;
        }
        Ok(())
    }

    fn on_inbound(&mut self, msg: Inbound2) -> Result<(), String> {
        match msg {
            Inbound2::Connected => self.on_connected(),
            Inbound2::Publish(topic, payload) => self.on_publish(&topic, &payload),
        }
    }

    fn on_connected(&mut self) -> Result<(), String> {
        let reconnect = self.connected_once;
        self.connected_once = true;
        let filters: Vec<String> = match self.spec.subscribe {
            Subscribe::Wildcard => {
                vec![format!(
                    "{}/{}/agents/+/down",
                    self.spec.prefix, self.spec.cluster
                )]
            }
            Subscribe::PerDevice => (0..self.devs.len())
                .filter(|&i| self.devs[i].state != State::Done)
                .map(|i| self.down_topic(i))
                .collect::<Result<_, _>>()?,
        };
        for chunk in filters.chunks(FILTERS_PER_SUBSCRIBE) {
            let batch = chunk
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
            self.client
                .subscribe_many(batch)
                .map_err(|e| format!("cannot subscribe: {e}"))?;
        }
        if reconnect {
            // Clean session: whatever was in flight is lost; log those devices in again.
            self.result.reconnects += 1;
            let waiting: Vec<usize> = (0..self.devs.len())
                .filter(|&i| matches!(self.devs[i].state, State::WaitChallenge | State::WaitResult))
                .collect();
            for i in waiting {
                self.login(i)?;
            }
        }
        Ok(())
    }

    fn down_topic(&self, local: usize) -> Result<String, String> {
        self.topics
            .down(&self.agent(local))
            .map(|t| t.as_str().to_owned())
            .map_err(|e| format!("down topic: {e}"))
    }

    fn start_logins(&mut self) -> Result<(), String> {
        if let Some(rate) = self.spec.rate {
            let now = Instant::now();
            let dt = now.duration_since(self.last_refill).as_secs_f64();
            self.last_refill = now;
            self.tokens = (self.tokens + dt * rate).min(rate.max(1.0));
        }
        while self.next < self.devs.len() && self.in_flight < self.spec.window {
            if self.spec.rate.is_some() {
                if self.tokens < 1.0 {
                    break;
                }
                self.tokens -= 1.0;
            }
            let i = self.next;
            self.next += 1;
            self.in_flight += 1;
            self.devs[i].started = Some(Instant::now());
            self.login(i)?;
        }
        Ok(())
    }

    /// Publishes device `i`'s Login (a new attempt) and arms its timeout.
    fn login(&mut self, i: usize) -> Result<(), String> {
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
        let key = self.spec.keys.for_device(self.spec.devices[i]);
        let login = Uplink::Login(Login {
            methods: heapless::Vec::from_slice(&[Method::TpmEk]).map_err(|_| "methods")?,
            ek_public: heapless::Vec::from_slice(key.ek.tpm2b_public())
                .map_err(|_| "EK public area too long")?,
            ek_cert: None,
            ek_chain: heapless::Vec::new(),
            ak_public: heapless::Vec::from_slice(key.ak.tpm2b_public())
                .map_err(|_| "AK public area too long")?,
            svid_key: Some(self.svid_spki.clone()),
        });
        let topic = self
            .topics
            .login(&agent)
            .map_err(|e| format!("login topic: {e}"))?;
        self.publish(topic.as_str(), &login)?;
        self.deadlines
            .push_back((Instant::now() + self.spec.timeout, i, attempt));
        Ok(())
    }

    fn publish(&mut self, topic: &str, msg: &Uplink) -> Result<(), String> {
        let mut buf = [0u8; limits::UPLINK_FRAME_MAX];
        let frame = encode(msg, &mut buf).map_err(|e| format!("encode {}: {e}", msg.kind()))?;
        self.result.wire_bytes += publish_wire_bytes(topic.len(), frame.len());
        self.client
            .publish(topic, QoS::AtLeastOnce, false, frame.to_vec())
            .map_err(|e| format!("publish: {e}"))
    }

    fn expire(&mut self) -> Result<(), String> {
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

    fn on_publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), String> {
        let Ok(Inbound::Down { agent }) = self.topics.parse(topic) else {
            return Ok(());
        };
        let Some(i) = self.local_device(agent) else {
            return Ok(()); // another thread's device (wildcard subscription)
        };
        self.result.wire_bytes += publish_wire_bytes(topic.len(), payload.len());
        let Ok(down) = decode::<Downlink>(payload) else {
            return self.failed_attempt(i, "undecodable downlink frame");
        };
        match (self.devs[i].state, down) {
            (State::WaitChallenge, Downlink::Challenge(c)) => {
                // Every field of the Challenge is the server's (or a corrupted frame's).
                let (topic, answer) = match self.answer(i, agent, &c) {
                    Ok(a) => a,
                    Err(why) => return self.failed_attempt(i, &why),
                };
                self.devs[i].state = State::WaitResult;
                self.devs[i].session = Some(c.session);
                self.publish(&topic, &answer)
            }
            (State::WaitResult, Downlink::Result(Outcome::Accepted(a))) => {
                let Some(session) = self.devs[i].session else {
                    return Ok(());
                };
                if a.svid.is_empty() {
                    return self.failed_attempt(i, "Accepted without an X.509-SVID");
                }
                self.accepted_seen += 1;
                let every = if self.spec.corrupt {
                    1
                } else {
                    self.spec.verify_every
                };
                if every > 0 && (self.accepted_seen - 1).is_multiple_of(every) {
                    let bytes = match sign::result_signed_bytes(agent, &session, &a) {
                        Ok(b) => b,
                        Err(e) => return self.failed_attempt(i, &format!("Result bytes: {e}")),
                    };
                    let key = UnparsedPublicKey::new(
                        &ECDSA_P256_SHA256_ASN1,
                        self.spec.ca_point.as_slice(),
                    );
                    if key.verify(&bytes, &a.signature).is_err() {
                        return self.failed_attempt(
                            i,
                            "Result signature does not verify with the server CA",
                        );
                    }
                    self.result.signatures_checked += 1;
                }
                let tti = self.devs[i]
                    .started
                    .map(|s| s.elapsed())
                    .unwrap_or_default();
                self.result.time_to_identity.push(tti);
                self.result.attested += 1;
                self.devs[i].attested = true;
                self.finish(i);
                Ok(())
            }
            (State::WaitChallenge | State::WaitResult, Downlink::Result(Outcome::Rejected(r))) => {
                // The code's own text: a corrupted message field must not add reasons.
                *self.result.reasons.entry(r.code.to_string()).or_default() += 1;
                match r.code {
                    // The server shed load: the attempt's timeout logs in again later.
                    RejectCode::Busy => return Ok(()),
                    // The answer of an earlier attempt (after a retry, a reconnect or a
                    // lost frame) met a replaced or expired session: log in again now.
                    RejectCode::UnknownSession | RejectCode::SessionExpired => {
                        return self.login(i);
                    }
                    // A corrupted Login or Answer: whatever the server made of it.
                    _ if self.spec.corrupt => {
                        self.result.corrupt_retries += 1;
                        return self.login(i);
                    }
                    _ => {}
                }
                self.result.rejected += 1;
                self.finish(i);
                Ok(())
            }
            // Stale: a Challenge or Result of an earlier attempt.
            _ => Ok(()),
        }
    }

    /// Device `i`'s Answer to `c` and its topic; `Err` says why the Challenge cannot be
    /// answered (a damaged frame, a credential for another key).
    fn answer(&self, i: usize, agent: &str, c: &Challenge) -> Result<(String, Uplink), String> {
        let key = self.spec.keys.for_device(self.spec.devices[i]);
        let secret = key
            .ek
            .activate_credential(key.ak.name(), &c.credential_blob, &c.encrypted_secret)
            .map_err(|e| format!("ActivateCredential: {e}"))?;
        let signed = sign::pop_signed_bytes(&c.session, &secret)
            .map_err(|e| format!("proof-of-possession bytes: {e}"))?;
        let pop = self
            .svid_key
            .sign(&self.rng, &signed)
            .map_err(|_| "cannot sign the proof of possession".to_owned())?;
        let answer = Uplink::Answer(Answer {
            session: c.session,
            secret: heapless::Vec::from_slice(&secret)
                .map_err(|_| "activated secret too long".to_owned())?,
            pop: Some(
                heapless::Vec::from_slice(pop.as_ref())
                    .map_err(|_| "proof-of-possession signature too long".to_owned())?,
            ),
        });
        let topic = self
            .topics
            .answer(c.node.as_str(), agent)
            .map_err(|e| format!("Challenge node id: {e}"))?;
        Ok((topic.as_str().to_owned(), answer))
    }

    fn finish(&mut self, i: usize) {
        let dev = &mut self.devs[i];
        if dev.state != State::Done {
            dev.state = State::Done;
            dev.session = None;
            dev.finished = Some(Instant::now());
            self.in_flight = self.in_flight.saturating_sub(1);
            self.finished += 1;
            self.spec.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An attempt that ended on a damaged frame: with `--corrupt` (and while the device
    /// waits) a new attempt starts at once, otherwise the device ends in error.
    fn failed_attempt(&mut self, i: usize, why: &str) -> Result<(), String> {
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

    fn finish_error(&mut self, i: usize, why: &str) -> Result<(), String> {
        *self.result.reasons.entry(why.to_owned()).or_default() += 1;
        if self.devs[i].state != State::Done {
            self.result.errors += 1;
        }
        self.finish(i);
        Ok(())
    }
}
