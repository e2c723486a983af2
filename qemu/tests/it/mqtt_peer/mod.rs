//! A small synchronous MQTT 3.1.1 test client (rumqttc) for the broker tests: connects (plain
//! or TLS on ring with an explicit provider), subscribes and waits for the SubAck, publishes
//! QoS 1 and waits for the PubAck, and collects incoming publishes on a channel.

#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    reason = "a test helper shared by test files; fails loudly"
)]

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use ekattest_fleet::broker::Broker;
use rumqttc::{
    Client, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};

/// How long to wait for a broker reply.
pub const REPLY: Duration = Duration::from_secs(5);
/// How long to watch for a publish that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(700);

/// One connected client.
pub struct Peer {
    pub id: String,
    client: Client,
    rx: Receiver<Result<Packet, String>>,
    pending: Vec<Publish>,
}

/// Where and how to connect.
pub enum Via<'a> {
    Plain,
    /// TLS to `mqtts://localhost:PORT`, trusting this CA file.
    Tls(&'a Path),
}

/// A rustls client config trusting exactly the certificates in `ca_pem`, ring provider.
pub fn tls_config(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(cfg)
}

/// Connects as client id `id`, optionally as `user` (password from the broker), and waits
/// for the ConnAck. `Err` carries rumqttc's error text (TLS failure, refused, ...).
pub fn connect(
    broker: &Broker,
    id: &str,
    user: Option<&str>,
    via: Via<'_>,
) -> Result<Peer, String> {
    let creds = match user {
        Some(u) => Some((
            u.to_owned(),
            broker
                .password(u)
                .ok_or_else(|| format!("the broker has no user {u}"))?,
        )),
        None => None,
    };
    connect_as(broker, id, creds, via)
}

/// Connects with explicit `(user, password)` credentials (or none).
pub fn connect_as(
    broker: &Broker,
    id: &str,
    creds: Option<(String, String)>,
    via: Via<'_>,
) -> Result<Peer, String> {
    let mut opts = match via {
        Via::Plain => MqttOptions::new(id, "127.0.0.1", broker.port()),
        Via::Tls(ca) => {
            let port = broker.tls_port().ok_or("the broker has no TLS listener")?;
            let mut o = MqttOptions::new(id, "localhost", port);
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls_config(ca),
            )));
            o
        }
    };
    opts.set_clean_session(true);
    open(opts, id, creds)
}

/// Connects to a plain MQTT listener on 127.0.0.1:`port` (e.g. a nats-server's) as client
/// id `id` with optional `(user, password)`; `clean` false keeps (or takes over) the
/// broker's session of that client id.
pub fn connect_port(
    port: u16,
    id: &str,
    creds: Option<(String, String)>,
    clean: bool,
) -> Result<Peer, String> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_clean_session(clean);
    open(opts, id, creds)
}

fn open(mut opts: MqttOptions, id: &str, creds: Option<(String, String)>) -> Result<Peer, String> {
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(16 * 1024, 16 * 1024);
    if let Some((u, pw)) = creds {
        opts.set_credentials(u, pw);
    }
    let (client, mut connection) = Client::new(opts, 64);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for ev in connection.iter() {
            let msg = match ev {
                Ok(Event::Incoming(p)) => Ok(p),
                Ok(Event::Outgoing(_)) => continue,
                Err(e) => Err(e.to_string()),
            };
            let stop = msg.is_err();
            if tx.send(msg).is_err() || stop {
                break;
            }
        }
    });
    let start = Instant::now();
    loop {
        let left = REPLY.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(Ok(Packet::ConnAck(_))) => break,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(format!("no ConnAck within {REPLY:?}")),
        }
    }
    Ok(Peer {
        id: id.to_owned(),
        client,
        rx,
        pending: Vec::new(),
    })
}

impl Peer {
    /// Next incoming packet other than publishes (which are kept for `expect_publish`).
    fn next_control(&mut self, timeout: Duration) -> Result<Packet, String> {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(Ok(Packet::Publish(p))) => self.pending.push(p),
                Ok(Ok(Packet::PingResp)) => {}
                Ok(Ok(p)) => return Ok(p),
                Ok(Err(e)) => return Err(format!("{}: connection error: {e}", self.id)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("{}: no reply within {timeout:?}", self.id));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("{}: connection closed", self.id));
                }
            }
        }
    }

    /// Subscribes QoS 1 and returns the SubAck's return code.
    pub fn subscribe(&mut self, filter: &str) -> Result<SubscribeReasonCode, String> {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .map_err(|e| e.to_string())?;
        match self.next_control(REPLY)? {
            Packet::SubAck(ack) => ack
                .return_codes
                .first()
                .copied()
                .ok_or_else(|| "empty SubAck".to_owned()),
            other => Err(format!("{}: expected SubAck, got {other:?}", self.id)),
        }
    }

    /// Publishes QoS 1 and waits for the PubAck (MQTT 3.1.1: mosquitto acknowledges a
    /// publish the ACL denies too, and drops it).
    pub fn publish(&mut self, topic: &str, payload: &[u8], retain: bool) -> Result<(), String> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .map_err(|e| e.to_string())?;
        match self.next_control(REPLY)? {
            Packet::PubAck(_) => Ok(()),
            other => Err(format!("{}: expected PubAck, got {other:?}", self.id)),
        }
    }

    /// Waits for a publish on `topic`; `None` if none arrives within `timeout`.
    pub fn expect_publish(&mut self, topic: &str, timeout: Duration) -> Option<Publish> {
        let start = Instant::now();
        loop {
            if let Some(i) = self.pending.iter().position(|p| p.topic == topic) {
                return Some(self.pending.remove(i));
            }
            let left = timeout.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(Ok(Packet::Publish(p))) => self.pending.push(p),
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Every publish received within `wait` (and before).
    pub fn drain(&mut self, wait: Duration) -> Vec<Publish> {
        let start = Instant::now();
        loop {
            let left = wait.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(Ok(Packet::Publish(p))) => self.pending.push(p),
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        std::mem::take(&mut self.pending)
    }

    /// Disconnects cleanly.
    pub fn disconnect(self) {
        let _ = self.client.disconnect();
    }
}
