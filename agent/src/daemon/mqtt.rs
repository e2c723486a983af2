//! The agent's MQTT client: a small synchronous MQTT 3.1.1 session on one TCP connection
//! (plain or rustls on the ring provider), with the packet codec of
//! [`ekattest_protocol::mqtt`]. It does exactly what the daemon needs: connect with a clean
//! session and keepalive 30 s, subscribe to the agent's down topic at QoS 1, publish at QoS
//! 1, acknowledge what arrives at QoS 1, ping, disconnect. No runtime and no thread: the
//! daemon's one thread calls [`Session::recv`] with a timeout and reads the socket itself.
//!
//! Why not rumqttc (the client of the first design): it runs a tokio event loop under its
//! sync API and brings tokio-rustls and a second rustls-webpki; measured on the aarch64
//! agent, this module and the codec replace 131 KB of it (README, "Agent footprint").
//!
//! Limits: packets up to [`PACKET_MAX`] in both directions; a larger one announced by the
//! broker ends the connection before its bytes are read. Every wait is bounded: TCP connect
//! and each read of the TLS handshake by [`CONNECT_TIMEOUT`], writes by [`WRITE_TIMEOUT`],
//! an unanswered PINGREQ by one keepalive. A TLS connection speaks TLS 1.3 only.
//!
//! Credentials come from files named in the config; the password is never logged. The
//! password file and the TLS client key are refused if group or others may read them
//! ([`check_private_file`]), and a plaintext connection to a non-loopback host (allowed only
//! by `insecure-plaintext: true`) is logged as a warning naming the host.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ekattest_protocol::limits::FRAME_MAX;
use ekattest_protocol::mqtt::{self, ConnectCode, Packet};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use ekattest_protocol::hardening::is_loopback_host;

use super::config::{Broker, Config, check_private_file};

/// MQTT keepalive.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// Largest MQTT packet sent or received: two protocol frames, plus topic and header room.
pub const PACKET_MAX: usize = 2 * FRAME_MAX + 1024;

/// Bound on the TCP connect to one address, and on each read of the TLS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on one write (a full socket buffer for this long means the broker is gone).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The SUBSCRIBE's packet identifier (the only one on a connection).
const SUBSCRIBE_ID: u16 = 1;

/// Why the MQTT client could not be set up (configuration or files; not the network).
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// A TLS or credential file could not be read or parsed.
    #[error("cannot use {what} {path}: {reason}")]
    File {
        /// Which config key's file.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Why a connection ended or could not be made (the network or the broker).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The broker refused the CONNECT.
    #[error("{0}")]
    Refused(ConnectCode),
    /// Anything else: what failed, for the log.
    #[error("{0}")]
    Io(String),
}

fn io(what: &str, e: &std::io::Error) -> NetError {
    NetError::Io(format!("{what}: {e}"))
}

/// What [`Session::recv`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The broker accepted the connection.
    Connected,
    /// The SUBACK: whether the broker refused the subscription (return code 0x80).
    Subscribed {
        /// The broker refused it.
        refused: bool,
    },
    /// A message.
    Message {
        /// Its topic.
        topic: String,
        /// Its payload.
        payload: Vec<u8>,
    },
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> MqttError {
    MqttError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The byte stream under the session.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// One broker connection: set up by [`Session::new`], connected by the first
/// [`Session::recv`].
pub struct Session {
    host: String,
    port: u16,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    subscribe: String,
    stream: Option<Stream>,
    /// Bytes read and not yet decoded: `inbox[..filled]`.
    inbox: Vec<u8>,
    filled: usize,
    next_id: u16,
    last_sent: Instant,
    ping_sent: Option<Instant>,
    keep_alive: Duration,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No password.
        f.debug_struct("Session")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("tls", &self.tls.is_some())
            .field("connected", &self.stream.is_some())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Sets up the session for `broker` (one of `config.brokers()`) with the settings of
    /// `config`, MQTT client id `agent_id`, subscribing to `down_topic` once connected.
    /// Nothing goes on the network until [`Session::recv`].
    ///
    /// # Errors
    /// [`MqttError`] if a TLS or password file cannot be used.
    pub fn new(
        config: &Config,
        broker: &Broker,
        agent_id: &str,
        down_topic: &str,
    ) -> Result<Self, MqttError> {
        if !broker.tls && !is_loopback_host(&broker.host) {
            log::warn!(
                "INSECURE: plaintext MQTT to non-loopback host {} (insecure-plaintext: true): \
                 the password and attestation messages cross the network unencrypted",
                broker.host
            );
        }
        let (username, password) = match &config.username {
            Some(user) => {
                let password = match &config.password_file {
                    Some(path) => Some(read_password(path)?),
                    None => None,
                };
                (Some(user.clone()), password)
            }
            None => (None, None),
        };
        let tls = if broker.tls {
            Some(Arc::new(tls_config(config)?))
        } else {
            None
        };
        Ok(Self {
            host: broker.host.clone(),
            port: broker.port,
            client_id: agent_id.to_owned(),
            username,
            password,
            tls,
            subscribe: down_topic.to_owned(),
            stream: None,
            inbox: vec![0; PACKET_MAX + mqtt::HEADER_MAX],
            filled: 0,
            next_id: SUBSCRIBE_ID,
            last_sent: Instant::now(),
            ping_sent: None,
            keep_alive: KEEPALIVE,
        })
    }

    /// Connects: TCP (each address in turn), TLS, then CONNECT and SUBSCRIBE in one write.
    fn connect(&mut self) -> Result<(), NetError> {
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| io(&format!("cannot resolve {}", self.host), &e))?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(io(&format!("cannot connect to {addr}"), &e)),
            }
        }
        let Some(tcp) = tcp else {
            return Err(last
                .unwrap_or_else(|| NetError::Io(format!("{} resolves to no address", self.host))));
        };
        let _ = tcp.set_nodelay(true);
        tcp.set_write_timeout(Some(WRITE_TIMEOUT))
            .and_then(|()| tcp.set_read_timeout(Some(CONNECT_TIMEOUT)))
            .map_err(|e| io("cannot set socket timeouts", &e))?;
        let mut stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                    NetError::Io(format!("{:?} is not a TLS server name: {e}", self.host))
                })?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| NetError::Io(format!("TLS: {e}")))?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).map_err(|e| {
                        NetError::Io(tls_hint(format!("TLS handshake failed: {e}")))
                    })?;
                }
                Stream::Tls(Box::new(s))
            }
        };
        let mut out = vec![
            0u8;
            2 * mqtt::HEADER_MAX
                + 64
                + self.client_id.len()
                + self.username.as_ref().map_or(0, String::len)
                + self.password.as_ref().map_or(0, String::len)
                + self.subscribe.len()
        ];
        let connect = mqtt::Connect {
            client_id: &self.client_id,
            keep_alive: u16::try_from(self.keep_alive.as_secs()).unwrap_or(u16::MAX),
            username: self.username.as_deref(),
            password: self.password.as_deref().map(str::as_bytes),
        };
        let n = mqtt::encode_connect(&connect, &mut out)
            .map_err(|e| NetError::Io(format!("cannot encode the CONNECT: {e}")))?;
        let m = mqtt::encode_subscribe(
            SUBSCRIBE_ID,
            &self.subscribe,
            out.get_mut(n..).unwrap_or_default(),
        )
        .map_err(|e| NetError::Io(format!("cannot encode the SUBSCRIBE: {e}")))?;
        write_all(&mut stream, out.get(..n + m).unwrap_or_default())?;
        self.stream = Some(stream);
        self.last_sent = Instant::now();
        self.filled = 0;
        Ok(())
    }

    /// Waits up to `timeout` for the next packet the daemon cares about; `Ok(None)` when the
    /// time is up. Connects first if not connected. Keepalive, PUBACKs and PINGRESPs are
    /// handled here.
    ///
    /// # Errors
    /// [`NetError::Refused`] if the broker refused the CONNECT; [`NetError::Io`] when the
    /// connection could not be made or is lost (closed, reset, a malformed or oversized
    /// packet, no PINGRESP within a keepalive). The session is then unusable.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Incoming>, NetError> {
        if self.stream.is_none() {
            self.connect()?;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(incoming) = self.next_packet()? {
                return Ok(Some(incoming));
            }
            let now = Instant::now();
            if let Some(sent) = self.ping_sent
                && now.duration_since(sent) >= self.keep_alive
            {
                return Err(NetError::Io(format!(
                    "no PINGRESP from the broker within {:?}",
                    self.keep_alive
                )));
            }
            if self.ping_sent.is_none() && now.duration_since(self.last_sent) >= self.keep_alive {
                self.send(&mqtt::PINGREQ_PACKET)?;
                self.ping_sent = Some(Instant::now());
            }
            if now >= deadline {
                return Ok(None);
            }
            let next_ping = match self.ping_sent {
                Some(sent) => sent + self.keep_alive,
                None => self.last_sent + self.keep_alive,
            };
            let wait = deadline
                .min(next_ping)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            self.fill(wait)?;
        }
    }

    /// Reads once (up to `wait`) into the inbox.
    fn fill(&mut self, wait: Duration) -> Result<(), NetError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(NetError::Io("not connected".into()));
        };
        stream
            .tcp()
            .set_read_timeout(Some(wait))
            .map_err(|e| io("cannot set the read timeout", &e))?;
        let space = self.inbox.get_mut(self.filled..).unwrap_or_default();
        match stream.read(space) {
            Ok(0) => Err(NetError::Io(
                "the broker closed the connection (end of file)".into(),
            )),
            Ok(n) => {
                self.filled += n;
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(io("read failed", &e)),
        }
    }

    /// Decodes the packets in the inbox until one the daemon cares about.
    fn next_packet(&mut self) -> Result<Option<Incoming>, NetError> {
        loop {
            let buf = self.inbox.get(..self.filled).unwrap_or_default();
            let decoded = mqtt::decode(buf, PACKET_MAX)
                .map_err(|e| NetError::Io(format!("from the broker: {e}")))?;
            let Some((packet, used)) = decoded else {
                return Ok(None);
            };
            let (incoming, ack) = match packet {
                Packet::ConnAck { code, .. } if code == ConnectCode::ACCEPTED => {
                    (Some(Incoming::Connected), None)
                }
                Packet::ConnAck { code, .. } => return Err(NetError::Refused(code)),
                Packet::SubAck { packet_id, codes } => {
                    if packet_id != SUBSCRIBE_ID {
                        return Err(NetError::Io(format!(
                            "from the broker: a SUBACK for packet {packet_id}, which was never \
                             sent"
                        )));
                    }
                    let refused = codes.contains(&0x80);
                    (Some(Incoming::Subscribed { refused }), None)
                }
                Packet::Publish(p) => (
                    Some(Incoming::Message {
                        topic: p.topic.to_owned(),
                        payload: p.payload.to_vec(),
                    }),
                    p.packet_id.map(mqtt::puback),
                ),
                Packet::PingResp => {
                    self.ping_sent = None;
                    (None, None)
                }
                Packet::PubAck { .. } | Packet::UnsubAck { .. } => (None, None),
            };
            self.inbox.copy_within(used..self.filled, 0);
            self.filled -= used;
            if let Some(ack) = ack {
                self.send(&ack)?;
            }
            if incoming.is_some() {
                return Ok(incoming);
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(NetError::Io("not connected".into()));
        };
        write_all(stream, bytes)?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Publishes `payload` on `topic` with QoS 1 (the PUBACK is not waited for: a lost
    /// message is covered by the daemon's response timeout).
    ///
    /// # Errors
    /// [`NetError::Io`] if not connected, the packet is over [`PACKET_MAX`], or the write
    /// fails.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<(), NetError> {
        let len = mqtt::publish_len(topic, payload);
        if len > PACKET_MAX {
            return Err(NetError::Io(format!(
                "a {len}-byte MQTT packet is over the limit of {PACKET_MAX} bytes"
            )));
        }
        if self.stream.is_none() {
            return Err(NetError::Io("not connected".into()));
        }
        self.next_id = match self.next_id.wrapping_add(1) {
            0 => SUBSCRIBE_ID + 1,
            id => id,
        };
        let mut out = vec![0u8; len];
        let n = mqtt::encode_publish(self.next_id, topic, payload, &mut out)
            .map_err(|e| NetError::Io(format!("cannot encode a PUBLISH: {e}")))?;
        self.send(out.get(..n).unwrap_or_default())
    }

    /// Sends DISCONNECT (and the TLS close_notify) if connected, then closes the socket.
    pub fn disconnect(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = write_all(&mut stream, &mqtt::DISCONNECT_PACKET);
            if let Stream::Tls(s) = &mut stream {
                s.conn.send_close_notify();
                let _ = s.conn.complete_io(&mut s.sock);
            }
            let _ = stream.tcp().shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.disconnect();
    }
}

#[cfg(test)]
mod tests;

fn write_all(stream: &mut Stream, bytes: &[u8]) -> Result<(), NetError> {
    stream
        .write_all(bytes)
        .and_then(|()| stream.flush())
        .map_err(|e| io("write failed", &e))
}

/// Adds what to do when a broker does not speak TLS 1.3 or shares nothing of the agent's
/// TLS profile ([`provider`]).
fn tls_hint(why: String) -> String {
    if why.contains("ProtocolVersion") || why.contains("protocol version") {
        format!(
            "{why} (the broker does not offer TLS 1.3, the only version this agent speaks: \
             enable TLS 1.3 on the broker)"
        )
    } else if why.contains("HandshakeFailure") || why.contains("PeerIncompatible") {
        format!(
            "{why} (the broker shares none of this agent's TLS 1.3 profile: key exchange \
             P-256 or P-384, a certificate with an RSA or ECDSA P-256/P-384 key; X25519-only \
             or Ed25519 brokers are not supported)"
        )
    } else {
        why
    }
}

fn read_password(path: &Path) -> Result<String, MqttError> {
    check_private_file("password-file", path).map_err(|e| file_error("password-file", path, e))?;
    let text = std::fs::read_to_string(path).map_err(|e| file_error("password-file", path, e))?;
    if text.len() > 4096 {
        return Err(file_error("password-file", path, "longer than 4 KiB"));
    }
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// The OS random source through ring, as rustls's own ring provider does.
#[derive(Debug)]
struct RingRandom;

impl rustls::crypto::SecureRandom for RingRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        use ring::rand::SecureRandom as _;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| rustls::crypto::GetRandomFailed)
    }
}

/// The `tls.key` loader: ECDSA or RSA keys (no Ed25519, see [`provider`]).
#[derive(Debug)]
struct RingKeys;

impl rustls::crypto::KeyProvider for RingKeys {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        rustls::crypto::ring::sign::any_ecdsa_type(&key_der).or_else(|_| {
            rustls::crypto::ring::sign::RsaSigningKey::new(&key_der)
                .map(|k| Arc::new(k) as Arc<dyn rustls::sign::SigningKey>)
        })
    }
}

/// The agent's TLS profile on ring: TLS 1.3's three cipher suites; key exchange on P-256
/// (the group every TLS 1.3 server must accept, RFC 8446 9.1) and P-384; certificates and
/// handshake signatures RSA (PKCS#1 v1.5 and PSS) or ECDSA P-256/P-384. Left out of ring's
/// default provider: X25519 and Ed25519, whose curve25519 code and tables (43.6 KB of the
/// aarch64 agent) nothing else in the agent needs. A broker that can only use them fails
/// the handshake, and [`tls_hint`] says so. The signature table is rustls 0.23's ring table
/// without Ed25519 (rustls does not export it).
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::SignatureScheme as S;
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::crypto::ring::{cipher_suite, kx_group};
    use webpki::ring as alg;
    static SIG_ALGS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
        all: &[
            alg::ECDSA_P256_SHA256,
            alg::ECDSA_P256_SHA384,
            alg::ECDSA_P384_SHA256,
            alg::ECDSA_P384_SHA384,
            alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
            alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
            alg::RSA_PKCS1_2048_8192_SHA256,
            alg::RSA_PKCS1_2048_8192_SHA384,
            alg::RSA_PKCS1_2048_8192_SHA512,
            alg::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
            alg::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
        ],
        mapping: &[
            (
                S::ECDSA_NISTP384_SHA384,
                &[alg::ECDSA_P384_SHA384, alg::ECDSA_P256_SHA384],
            ),
            (
                S::ECDSA_NISTP256_SHA256,
                &[alg::ECDSA_P256_SHA256, alg::ECDSA_P384_SHA256],
            ),
            (
                S::RSA_PSS_SHA512,
                &[alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
            ),
            (
                S::RSA_PSS_SHA384,
                &[alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
            ),
            (
                S::RSA_PSS_SHA256,
                &[alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
            ),
            (S::RSA_PKCS1_SHA512, &[alg::RSA_PKCS1_2048_8192_SHA512]),
            (S::RSA_PKCS1_SHA384, &[alg::RSA_PKCS1_2048_8192_SHA384]),
            (S::RSA_PKCS1_SHA256, &[alg::RSA_PKCS1_2048_8192_SHA256]),
        ],
    };
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
        signature_verification_algorithms: SIG_ALGS,
        secure_random: &RingRandom,
        key_provider: &RingKeys,
    }
}

/// The rustls client configuration: ring provider, TLS 1.3, the `tls.ca`
/// roots, and the `tls.cert`/`tls.key` client certificate if configured.
///
/// # Errors
/// [`MqttError`] naming the file or rustls's complaint.
pub fn tls_config(config: &Config) -> Result<rustls::ClientConfig, MqttError> {
    let tls = config.tls.clone().unwrap_or(super::config::Tls {
        ca: None,
        cert: None,
        key: None,
    });
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| file_error("tls.ca", ca, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error("tls.ca", ca, e))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(file_error("tls.ca", ca, "no usable PEM certificate"));
        }
    }
    let provider = Arc::new(provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_error("tls.cert", cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error("tls.cert", cert, e))?;
            check_private_file("tls.key", key).map_err(|e| file_error("tls.key", key, e))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("tls.key", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| MqttError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
