//! Bogus logins for flood tests (`load --bogus N --bogus-kind ...`): N Logins from distinct
//! agent ids, of three classes, published over one MQTT connection while the real devices
//! attest; every Rejected that comes back is counted per class and reject code.
//!
//! - `random`: random bytes (1 to 600, mostly behind the right version byte) on the login
//!   topic of a fake agent id: the server's decoder refuses them
//!   (`attestation_frames_rejected_total{reason="malformed"}`).
//! - `garbage-cert`: a well-formed Login (a valid soft-TPM EK and AK) whose EK certificate is
//!   random bytes: refused by the certificate parser, before any signature check.
//! - `wrong-ek`: a well-formed Login carrying a real, parseable certificate (a swtpm EK
//!   certificate in the flood test, the run's SVID CA certificate in `load`) with another
//!   key's EK public area: refused by the key comparison, before the chain and MakeCredential.
//!
//! Each well-formed Login carries a fresh P-256 EK and comes from that EK's own agent id
//! (`ek-` + its public_hash prefix), so it passes the server's `agent-id-from-ek` check and
//! its per-EK login limit and reaches the check its class is about: the strongest flood, an
//! attacker with an endless supply of keys. (The same EK under many fake ids would be
//! refused earlier, as `agent_id_mismatch` or rate limited.)
//!
//! Flow control: at most `window` logins are unanswered at a time (the broker queues at most
//! 1000 messages per subscriber and drops the rest), with a stall timeout so a lost reply
//! cannot stop the flood. Fake ids are `bogus-{run}-r{n}`; the derived ids of the
//! well-formed Logins are remembered until their reply comes. This module never touches a
//! real device's topics and never panics on what the broker sends back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ekattest_protocol::limits::NONCE_LEN;
use ekattest_protocol::msg::{Downlink, LEGACY_VERSIONS, Login, Method, Outcome, Uplink, VERSION};
use ekattest_protocol::topic::{Topics, default_agent_id};
use ekattest_protocol::{decode, encode, heapless, limits};
use ekattest_server::daemon::metrics::reason_label;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

use crate::error::{Error, Result};
use crate::soft_tpm::{EkAlg, SoftAk, SoftEk};

/// One class of bogus login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BogusKind {
    /// Random bytes on the login topic.
    Random,
    /// A valid Login with a garbage EK certificate.
    GarbageCert,
    /// A valid Login with a real certificate and another key's EK public area.
    WrongEk,
}

impl BogusKind {
    /// Every class, in the order `mix` cycles through them.
    pub const ALL: [Self; 3] = [Self::Random, Self::GarbageCert, Self::WrongEk];

    /// The `--bogus-kind` name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::GarbageCert => "garbage-cert",
            Self::WrongEk => "wrong-ek",
        }
    }

    /// Parses `random`, `garbage-cert`, `wrong-ek` or `mix` (all three in turn).
    pub fn parse_list(s: &str) -> Option<Vec<Self>> {
        match s {
            "mix" => Some(Self::ALL.to_vec()),
            _ => Self::ALL.iter().find(|k| k.as_str() == s).map(|k| vec![*k]),
        }
    }

    const fn letter(self) -> char {
        match self {
            Self::Random => 'r',
            Self::GarbageCert => 'g',
            Self::WrongEk => 'w',
        }
    }
}

/// What to flood.
#[derive(Debug, Clone)]
pub struct BogusOptions {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic prefix.
    pub prefix: String,
    /// Cluster id.
    pub cluster: String,
    /// A short run tag for the fake ids and the client id.
    pub run: String,
    /// Logins to send in all.
    pub count: usize,
    /// Classes, used in turn.
    pub kinds: Vec<BogusKind>,
    /// A parseable X.509 certificate (DER) for `wrong-ek`.
    pub wrong_ek_cert: Vec<u8>,
    /// Most logins unanswered at a time.
    pub window: usize,
    /// How long to wait for the last replies once everything is sent.
    pub settle: Duration,
}

/// What a flood did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BogusReport {
    /// Logins sent per class.
    pub sent: BTreeMap<BogusKind, usize>,
    /// Rejected results received per class and reject-code label.
    pub rejected: BTreeMap<BogusKind, BTreeMap<&'static str, usize>>,
    /// Other downlinks received on bogus topics (a Challenge would be a server bug).
    pub unexpected: usize,
    /// Times the window stalled past the stall timeout (replies lost).
    pub stalls: usize,
    /// Time from the first publish to the last reply (or the settle timeout).
    pub elapsed: Duration,
}

impl BogusReport {
    /// Rejected results received for `kind`.
    pub fn answered(&self, kind: BogusKind) -> usize {
        self.rejected.get(&kind).map_or(0, |m| m.values().sum())
    }

    /// Logins sent in all.
    pub fn total_sent(&self) -> usize {
        self.sent.values().sum()
    }

    /// One line per class: `class: sent N, rejected {code: n, ...}`.
    pub fn lines(&self) -> Vec<String> {
        self.sent
            .iter()
            .map(|(k, n)| {
                let codes: Vec<String> = self
                    .rejected
                    .get(k)
                    .map(|m| m.iter().map(|(c, n)| format!("{c}: {n}")).collect())
                    .unwrap_or_default();
                format!(
                    "bogus {}: sent {n}, rejected {{{}}}",
                    k.as_str(),
                    codes.join(", ")
                )
            })
            .collect()
    }
}

/// A tiny xorshift generator: bogus bytes need no quality, only speed and a seed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }

    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(v.get(..chunk.len()).unwrap_or(&v));
        }
    }
}

/// The frames of the well-formed classes: each a fresh soft EK, one AK for all.
struct Frames {
    ak: SoftAk,
    wrong_ek_cert: Vec<u8>,
    noise: Noise,
    buf: Vec<u8>,
}

impl Frames {
    fn login(&mut self, ek: &SoftEk, cert: &[u8]) -> Result<Uplink> {
        let mut nonce = [0u8; NONCE_LEN];
        self.noise.fill(&mut nonce);
        Ok(Uplink::Login(Login {
            methods: heapless::Vec::from_slice(&[Method::TpmEk])
                .map_err(|_| Error::Device("methods".into()))?,
            ek_public: heapless::Vec::from_slice(ek.tpm2b_public())
                .map_err(|_| Error::Device("EK public area too long".into()))?,
            ek_cert: Some(heapless::Vec::from_slice(cert).map_err(|_| {
                Error::Device(format!(
                    "certificate of {} bytes is longer than {}",
                    cert.len(),
                    limits::EK_CERT_MAX
                ))
            })?),
            ek_chain: heapless::Vec::new(),
            ak_public: heapless::Vec::from_slice(self.ak.tpm2b_public())
                .map_err(|_| Error::Device("AK public area too long".into()))?,
            svid_key: None,
            key_certify: None,
            nonce,
            signer_hint: None,
        }))
    }

    /// The `n`th bogus frame of `kind` and the agent id it is sent from (`fake` for the
    /// random class, the fresh EK's own id for the others).
    fn frame(&mut self, kind: BogusKind, fake: String) -> Result<(String, Vec<u8>)> {
        let cert = match kind {
            BogusKind::Random => {
                let mut bytes = vec![0u8; 1 + self.noise.below(600)];
                self.noise.fill(&mut bytes);
                // Mostly the right version byte, so the body reaches the decoder.
                if self.noise.below(4) != 0
                    && let Some(v) = bytes.first_mut()
                {
                    *v = VERSION;
                }
                return Ok((fake, bytes));
            }
            BogusKind::GarbageCert => {
                let mut cert = vec![0u8; 200 + self.noise.below(1000)];
                self.noise.fill(&mut cert);
                cert
            }
            BogusKind::WrongEk => self.wrong_ek_cert.clone(),
        };
        let ek =
            SoftEk::generate(EkAlg::P256).map_err(|e| Error::Device(format!("bogus EK: {e}")))?;
        let msg = self.login(&ek, &cert)?;
        let agent = default_agent_id(ek.public_hash()).to_string();
        let frame = encode(&msg, &mut self.buf)
            .map(<[u8]>::to_vec)
            .map_err(|e| Error::Device(format!("cannot encode a bogus Login: {e}")))?;
        Ok((agent, frame))
    }
}

/// Decodes a reply to a bogus Login. A random frame whose first byte names an older protocol
/// version is refused in that version ([`ekattest_protocol::msg::encode_legacy_rejection`]:
/// this version's Rejected frame with the old version byte), so such a frame is read with
/// this version's byte put back.
fn decode_reply(payload: &[u8]) -> Result<Downlink, ekattest_protocol::DecodeError> {
    match payload.split_first() {
        Some((v, rest)) if LEGACY_VERSIONS.contains(v) => {
            let mut frame = Vec::with_capacity(payload.len());
            frame.push(VERSION);
            frame.extend_from_slice(rest);
            match decode::<Downlink>(&frame)? {
                rejected @ Downlink::Result(Outcome::Rejected(_)) => Ok(rejected),
                // A legacy frame is only ever a rejection.
                _ => decode::<Downlink>(payload),
            }
        }
        _ => decode::<Downlink>(payload),
    }
}

/// Sends `opts.count` bogus logins and counts the replies. `stop` ends it early.
///
/// # Errors
/// A message if the keys, the MQTT connection or the topics cannot be set up.
pub fn flood(opts: &BogusOptions, stop: &AtomicBool) -> Result<BogusReport> {
    if opts.kinds.is_empty() {
        return Err(Error::Device("no bogus kind given".into()));
    }
    let seed = u64::from(std::process::id()) << 20 | 0x9e37_79b9;
    let mut frames = Frames {
        ak: SoftAk::generate().map_err(|e| Error::Device(format!("bogus AK: {e}")))?,
        wrong_ek_cert: opts.wrong_ek_cert.clone(),
        noise: Noise(seed),
        buf: vec![0u8; limits::FRAME_MAX],
    };
    let topics =
        Topics::new(&opts.prefix, &opts.cluster).map_err(|e| Error::Device(e.to_string()))?;
    let down_filter = format!("{}/{}/agents/+/down", opts.prefix, opts.cluster);
    let fake_prefix = format!("bogus-{}-", opts.run);

    let mut mqtt = MqttOptions::new(format!("bogus-{}", opts.run), opts.host.clone(), opts.port);
    mqtt.set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(16 * 1024, 16 * 1024)
        .set_inflight(200);
    let (client, mut connection) = Client::new(mqtt, 1024);
    let (tx, rx) = mpsc::channel::<Result<(String, Vec<u8>), ()>>();
    let stop_net = Arc::new(AtomicBool::new(false));
    let stop_flag = Arc::clone(&stop_net);
    let net = thread::Builder::new()
        .name("bogus-mqtt".into())
        .spawn(move || {
            for event in connection.iter() {
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                let sent = match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        tx.send(Ok((p.topic, p.payload.to_vec())))
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => tx.send(Err(())),
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
        .map_err(|e| Error::Device(format!("cannot start the bogus MQTT thread: {e}")))?;
    client
        .subscribe(down_filter.as_str(), QoS::AtMostOnce)
        .map_err(|e| Error::Device(format!("cannot subscribe {down_filter}: {e}")))?;
    // Wait for the SUBACK so no reply is missed.
    let subscribed = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Err(())) => break,
            Ok(Ok(_)) => {}
            Err(_) => {
                stop_net.store(true, Ordering::Relaxed);
                let _ = client.disconnect();
                return Err(Error::Device(format!(
                    "no SUBACK for {down_filter} after {:.0} s",
                    subscribed.elapsed().as_secs_f64()
                )));
            }
        }
    }

    let mut report = BogusReport::default();
    let mut answered = 0usize;
    // The derived agent ids of well-formed Logins not answered yet, and their class.
    let mut derived: HashMap<String, BogusKind> = HashMap::new();
    let count_reply = |report: &mut BogusReport,
                       derived: &mut HashMap<String, BogusKind>,
                       topic: &str,
                       payload: &[u8]|
     -> bool {
        let Some(agent) = topic
            .strip_suffix("/down")
            .and_then(|t| t.rsplit('/').next())
        else {
            return false;
        };
        let kind = match agent.strip_prefix(&fake_prefix).map(|a| a.chars().next()) {
            Some(Some('r')) => BogusKind::Random,
            Some(Some('g')) => BogusKind::GarbageCert,
            Some(Some('w')) => BogusKind::WrongEk,
            Some(_) => return false,
            None => match derived.remove(agent) {
                Some(kind) => kind,
                None => return false, // a real device's downlink
            },
        };
        match decode_reply(payload) {
            Ok(Downlink::Result(Outcome::Rejected(r))) => {
                *report
                    .rejected
                    .entry(kind)
                    .or_default()
                    .entry(reason_label(r.code))
                    .or_default() += 1;
            }
            _ => report.unexpected += 1,
        }
        true
    };
    let stall = Duration::from_secs(2);
    let window = opts.window.max(1);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut last_progress = Instant::now();
    while sent < opts.count && !stop.load(Ordering::Relaxed) {
        // Drain replies; block while the window is full.
        loop {
            let full = sent.saturating_sub(answered) >= window;
            let next = if full {
                rx.recv_timeout(Duration::from_millis(50)).ok()
            } else {
                rx.try_recv().ok()
            };
            match next {
                Some(Ok((topic, payload))) => {
                    if count_reply(&mut report, &mut derived, &topic, &payload) {
                        answered += 1;
                        last_progress = Instant::now();
                    }
                }
                Some(Err(())) => {}
                None if full && last_progress.elapsed() > stall => {
                    // Replies were lost: forget them so the flood goes on.
                    report.stalls += 1;
                    answered = sent.saturating_sub(window / 2);
                    last_progress = Instant::now();
                    break;
                }
                None if full => {}
                None => break,
            }
        }
        let kind = opts
            .kinds
            .get(sent % opts.kinds.len())
            .copied()
            .unwrap_or(BogusKind::Random);
        let (agent, frame) = frames.frame(kind, format!("{fake_prefix}{}{sent}", kind.letter()))?;
        let topic = topics
            .login(&agent)
            .map_err(|e| Error::Device(format!("{agent}: {e}")))?;
        if kind != BogusKind::Random {
            derived.insert(agent, kind);
        }
        client
            .publish(topic.as_str(), QoS::AtMostOnce, false, frame)
            .map_err(|e| Error::Device(format!("cannot publish a bogus login: {e}")))?;
        *report.sent.entry(kind).or_default() += 1;
        sent += 1;
    }
    // Collect the last replies.
    let deadline = Instant::now() + opts.settle;
    let mut last = started.elapsed();
    while answered < sent && Instant::now() < deadline {
        if let Ok(Ok((topic, payload))) = rx.recv_timeout(Duration::from_millis(50))
            && count_reply(&mut report, &mut derived, &topic, &payload)
        {
            answered += 1;
            last = started.elapsed();
        }
    }
    report.elapsed = last;
    stop_net.store(true, Ordering::Relaxed);
    let _ = client.disconnect();
    drop(rx);
    let _ = net.join();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_mix_cycles_all_three() {
        assert_eq!(
            BogusKind::parse_list("mix").unwrap(),
            BogusKind::ALL.to_vec()
        );
        assert_eq!(
            BogusKind::parse_list("wrong-ek").unwrap(),
            vec![BogusKind::WrongEk]
        );
        assert!(BogusKind::parse_list("cert").is_none());
    }

    #[test]
    fn legacy_rejections_are_read_and_nothing_else_is_rewritten() {
        use ekattest_protocol::RejectCode;
        use ekattest_protocol::msg::{Rejected, encode_legacy_rejection};
        let rejected = Rejected::new(RejectCode::UnsupportedVersion);
        let mut buf = vec![0u8; limits::FRAME_MAX];
        let legacy = encode_legacy_rejection(1, &rejected, &mut buf)
            .unwrap()
            .to_vec();
        assert_eq!(legacy[0], 1);
        assert!(decode::<Downlink>(&legacy).is_err());
        assert_eq!(
            decode_reply(&legacy).unwrap(),
            Downlink::Result(Outcome::Rejected(rejected.clone()))
        );
        let current = encode(&Downlink::Result(Outcome::Rejected(rejected)), &mut buf)
            .unwrap()
            .to_vec();
        assert_eq!(
            decode_reply(&current).unwrap(),
            decode::<Downlink>(&current).unwrap()
        );
        assert!(decode_reply(&[0x77, 1, 2]).is_err());
    }

    #[test]
    fn frames_of_each_class_have_the_intended_shape() {
        let cert = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        let mut f = Frames {
            ak: SoftAk::generate().unwrap(),
            wrong_ek_cert: cert.clone(),
            noise: Noise(42),
            buf: vec![0u8; limits::FRAME_MAX],
        };
        for n in 0..50 {
            let (agent, r) = f.frame(BogusKind::Random, format!("fake-{n}")).unwrap();
            assert!((1..=600).contains(&r.len()));
            assert_eq!(agent, format!("fake-{n}"));
        }
        // The well-formed classes: each Login a fresh EK, from that EK's own agent id.
        let ek_agent = |l: &Login| {
            let public = ekattest_protocol::tpm::public::Public::decode(&l.ek_public).unwrap();
            default_agent_id(&public.key.public_hash().unwrap()).to_string()
        };
        let (agent, frame) = f.frame(BogusKind::GarbageCert, "fake".into()).unwrap();
        let first_ek = match decode::<Uplink>(&frame).unwrap() {
            Uplink::Login(l) => {
                let c = l.ek_cert.as_ref().unwrap();
                assert!(c.len() >= 200 && c.as_slice() != cert.as_slice());
                assert_eq!(agent, ek_agent(&l));
                l.ek_public
            }
            other => panic!("{other:?}"),
        };
        let (agent, frame) = f.frame(BogusKind::WrongEk, "fake".into()).unwrap();
        match decode::<Uplink>(&frame).unwrap() {
            Uplink::Login(l) => {
                assert_eq!(l.ek_cert.as_ref().unwrap().as_slice(), cert.as_slice());
                assert_eq!(agent, ek_agent(&l));
                assert_ne!(l.ek_public, first_ek, "a fresh EK per Login");
            }
            other => panic!("{other:?}"),
        }
    }
}
